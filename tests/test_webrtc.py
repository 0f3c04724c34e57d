"""DataChannelLinks over loopback WebRTC through the real signaling server."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aioice.ice
import pytest
from aiortc import RTCIceServer
from rtc_helpers import WORKER_KEY, run, signaling_server

from sleap_rtc.signaling.client import SignalingClient, SignalingError
from sleap_rtc.signaling.server import SignalingServer
from sleap_rtc.transport import loopback
from sleap_rtc.transport.answerer import Answerer, serve_links
from sleap_rtc.transport.channel import (
    PROTOCOL,
    ConnectError,
    DataChannelLink,
    FrameTooLargeToSend,
    ice_configuration,
)
from sleap_rtc.transport.link import Link, LinkClosed
from sleap_rtc.transport.webrtc import make_connector, offer_link
from sleap_rtc_proto.limits import MAX_FRAME_BYTES


@contextlib.asynccontextmanager
async def peers(server: SignalingServer) -> AsyncIterator[tuple[SignalingClient, SignalingClient]]:
    worker = await SignalingClient.connect(server.url, timeout=5)
    client = await SignalingClient.connect(server.url, timeout=5)
    try:
        await worker.register(room_id="lab", role="worker", worker_key=WORKER_KEY, peer_id="w1")
        await client.register(room_id="lab", role="client", token=server.issuer.issue("a", "lab"))
        yield worker, client
    finally:
        await client.close()
        await worker.close()


@contextlib.asynccontextmanager
async def link_pair(tmp_path: Path) -> AsyncIterator[tuple[DataChannelLink, DataChannelLink]]:
    async with (
        signaling_server(tmp_path) as server,
        peers(server) as (worker, client),
        Answerer(worker, loopback=True, timeout=10) as answerer,
    ):
        c_link = await offer_link(client, "w1", loopback=True, timeout=10)
        w_link = await answerer.accept(timeout=10)
        try:
            yield c_link, w_link
        finally:
            await c_link.close()
            await w_link.close()


def test_frames_both_ways_and_size_limit(tmp_path: Path) -> None:
    async def main() -> None:
        async with link_pair(tmp_path) as (c, w):
            assert isinstance(c, Link) and isinstance(w, Link)
            assert c.protocol == w.protocol == PROTOCOL
            assert c.channel.ordered and c.channel.maxRetransmits is None
            assert w.peer_id.startswith("client-")
            for i in range(50):
                await c.send(b"c%d" % i)
            assert [await w.recv() for _ in range(50)] == [b"c%d" % i for i in range(50)]
            await w.send(b"pong")
            assert await c.recv() == b"pong"
            big = bytes(range(256)) * (MAX_FRAME_BYTES // 256)
            assert len(big) == MAX_FRAME_BYTES
            await c.send(big)
            assert await asyncio.wait_for(w.recv(), 10) == big
            with pytest.raises(FrameTooLargeToSend, match="262144"):
                await c.send(big + b"x")
            with pytest.raises(TypeError):
                await c.send("text")  # type: ignore[arg-type]
            # The link is still usable after the refusal.
            await c.send(b"after")
            assert await w.recv() == b"after"

    run(main())


def test_close_surfaces_as_linkclosed_on_the_other_side(tmp_path: Path) -> None:
    async def main() -> None:
        async with link_pair(tmp_path) as (c, w):
            await c.send(b"last")
            pending = asyncio.ensure_future(w.recv())
            assert await asyncio.wait_for(pending, 5) == b"last"
            waiting = asyncio.ensure_future(w.recv())
            await asyncio.sleep(0.05)
            t0 = time.monotonic()
            await c.close()
            with pytest.raises(LinkClosed):
                await asyncio.wait_for(waiting, 5)
            assert time.monotonic() - t0 < 5
            assert w.closed and c.closed
            with pytest.raises(LinkClosed):
                await w.recv()  # every later recv raises too
            with pytest.raises(LinkClosed):
                await c.send(b"x")
            with pytest.raises(LinkClosed):
                await w.send(b"x")
            await c.close()  # idempotent

    run(main())


def test_peer_connection_teardown_surfaces_as_linkclosed(tmp_path: Path) -> None:
    async def main() -> None:
        async with link_pair(tmp_path) as (c, w):
            waiting = asyncio.ensure_future(c.recv())
            await w.pc.close()  # the worker's side vanishes without closing the channel
            with pytest.raises(LinkClosed):
                await asyncio.wait_for(waiting, 5)

    run(main())


def test_text_messages_are_ignored_not_fatal(tmp_path: Path) -> None:
    async def main() -> None:
        async with link_pair(tmp_path) as (c, w):
            c.channel.send("TYPE::not::bytes")  # a legacy text frame, bypassing the Link
            await c.send(b"bytes")
            assert await asyncio.wait_for(w.recv(), 5) == b"bytes"
            assert w.text_messages_ignored == 1

    run(main())


def test_wrong_channel_protocol_is_refused(tmp_path: Path) -> None:
    async def main() -> None:
        async with (
            signaling_server(tmp_path) as server,
            peers(server) as (worker, client),
            Answerer(worker, loopback=True, timeout=5) as answerer,
        ):
            try:
                link = await offer_link(client, "w1", loopback=True, timeout=5, protocol="legacy")
            except LinkClosed:
                pass  # refused before the open was seen
            else:
                with pytest.raises(LinkClosed):
                    await asyncio.wait_for(link.recv(), 5)
                await link.close()
            for _ in range(50):
                if answerer.refused:
                    break
                await asyncio.sleep(0.02)
            assert answerer.refused == 1
            with pytest.raises(ConnectError):
                await answerer.accept(timeout=0.3)  # nothing was yielded
            # A correct client still gets through afterwards.
            good = await offer_link(client, "w1", loopback=True, timeout=5)
            theirs = await answerer.accept(timeout=5)
            await good.send(b"ok")
            assert await theirs.recv() == b"ok"
            await good.close()
            await theirs.close()

    run(main())


def test_offer_to_unknown_peer_and_no_answer(tmp_path: Path) -> None:
    async def main() -> None:
        async with signaling_server(tmp_path) as server, peers(server) as (_worker, client):
            with pytest.raises(SignalingError) as info:
                await offer_link(client, "nobody", loopback=True, timeout=5)
            assert info.value.code == "unknown_peer"
            # w1 is registered but nobody answers: a timeout, not a hang.
            t0 = time.monotonic()
            with pytest.raises(ConnectError, match="within"):
                await offer_link(client, "w1", loopback=True, timeout=0.5)
            assert time.monotonic() - t0 < 3

    run(main())


def test_loopback_candidates_only_inside_the_option(tmp_path: Path) -> None:
    async def main() -> None:
        async with link_pair(tmp_path) as (c, _w):
            sdp = c.pc.localDescription.sdp
            hosts = [line.split()[4] for line in sdp.splitlines() if line.startswith("a=candidate")]
            assert hosts and set(hosts) == {"127.0.0.1"}
        assert loopback.installed()
        # Outside the option, aioice's own host list is used (no 127.0.0.1).
        assert "127.0.0.1" not in aioice.ice.get_host_addresses(True, False)
        with loopback.loopback_candidates():
            assert aioice.ice.get_host_addresses(True, True) == ["127.0.0.1"]

    run(main())


def test_ice_configuration_never_defaults_to_a_public_server() -> None:
    assert ice_configuration().iceServers == []
    assert ice_configuration(None).iceServers == []
    conf = ice_configuration(
        [
            "stun:stun.lab.example:3478",
            {"urls": "turn:t.example", "username": "u", "credential": "p"},
        ]
    )
    assert conf.iceServers is not None
    assert [s.urls for s in conf.iceServers] == ["stun:stun.lab.example:3478", "turn:t.example"]
    assert conf.iceServers[1].username == "u"
    assert ice_configuration([RTCIceServer(urls="stun:x")]).iceServers[0].urls == "stun:x"  # type: ignore[index]


def test_serve_links_with_make_connector(tmp_path: Path) -> None:
    async def echo(link: DataChannelLink) -> None:
        while True:
            try:
                frame = await link.recv()
            except LinkClosed:
                return
            await link.send(frame.upper())

    async def main() -> None:
        async with signaling_server(tmp_path) as server:
            worker = await SignalingClient.connect(server.url)
            await worker.register(room_id="lab", role="worker", worker_key=WORKER_KEY, peer_id="w1")
            serving = asyncio.ensure_future(serve_links(worker, echo, loopback=True, timeout=5))
            try:
                connect = make_connector(
                    server.url, room_id="lab", token=server.issuer.issue("a", "lab"), loopback=True
                )
                for _ in range(2):  # each call is a fresh connection
                    link = await connect()
                    await link.send(b"hello")
                    assert await asyncio.wait_for(link.recv(), 5) == b"HELLO"
                    await link.close()
                bad = make_connector(server.url, room_id="lab", token="nope", loopback=True)
                with pytest.raises(SignalingError) as info:
                    await bad()
                assert info.value.is_auth
                other = make_connector(
                    server.url,
                    room_id="lab",
                    token=server.issuer.issue("a", "lab"),
                    worker_id="w-missing",
                    loopback=True,
                )
                with pytest.raises(SignalingError) as info:
                    await other()
                assert info.value.code == "unknown_peer"
            finally:
                await worker.close()
                await asyncio.wait_for(serving, 5)  # ends once its signaling is gone

    run(main())


def test_garbage_offer_does_not_stop_the_answerer(tmp_path: Path) -> None:
    async def main() -> None:
        async with (
            signaling_server(tmp_path) as server,
            peers(server) as (worker, client),
            Answerer(worker, loopback=True, timeout=5) as answerer,
        ):
            await client.relay("offer", "w1", sdp="this is not sdp", session="bad")
            await client.relay("offer", "w1", sdp="v=0\r\nm=application 9 FOO\r\n", session="b2")
            link = await offer_link(client, "w1", loopback=True, timeout=5)
            theirs = await answerer.accept(timeout=5)
            await link.send(b"still fine")
            assert await theirs.recv() == b"still fine"
            await link.close()
            await theirs.close()

    run(main())


def test_concurrent_connections_to_one_worker(tmp_path: Path) -> None:
    async def main() -> None:
        async with (
            signaling_server(tmp_path) as server,
            peers(server) as (worker, client),
            Answerer(worker, loopback=True, timeout=10) as answerer,
        ):
            mine = await asyncio.gather(
                *(offer_link(client, "w1", loopback=True, timeout=10) for _ in range(4))
            )
            theirs = [await answerer.accept(timeout=10) for _ in range(4)]
            for i, link in enumerate(mine):
                await link.send(b"%d" % i)
            got = sorted([await asyncio.wait_for(t.recv(), 5) for t in theirs])
            assert got == [b"0", b"1", b"2", b"3"]
            for link in [*mine, *theirs]:
                await link.close()

    run(main())


def test_backpressure_keeps_order_and_flooding_closes(tmp_path: Path) -> None:
    async def main() -> None:
        async with link_pair(tmp_path) as (c, w):
            c.high_water = 150_000
            c.channel.bufferedAmountLowThreshold = 75_000
            frames = [bytes([i]) * 100_000 for i in range(20)]

            async def sender() -> None:
                for f in frames:
                    await c.send(f)

            sending = asyncio.ensure_future(sender())
            got = [await asyncio.wait_for(w.recv(), 10) for _ in frames]
            await sending
            assert got == frames
            # A receiver that never reads is protected by its inbox limit.
            w.max_inbox_bytes = 500_000
            with contextlib.suppress(LinkClosed):  # the sender learns of the close too
                for f in frames[:10]:
                    await c.send(f)
            assert await w.wait_closed(10)
            assert "flooded" in w.close_reason

    run(main())


def test_serve_links_keeps_links_when_signaling_drops_and_cancels_them_on_shutdown(
    tmp_path: Path,
) -> None:
    async def echo(link: DataChannelLink) -> None:
        while True:
            await link.send(await link.recv())

    async def main() -> None:
        async with signaling_server(tmp_path) as server:
            token = server.issuer.issue("a", "lab")
            connect = make_connector(server.url, room_id="lab", token=token, loopback=True)
            handlers: set[asyncio.Task[None]] = set()
            worker = await SignalingClient.connect(server.url)
            await worker.register(room_id="lab", role="worker", worker_key=WORKER_KEY)
            serving = asyncio.ensure_future(
                serve_links(worker, echo, loopback=True, handlers=handlers)
            )
            first = await connect()
            await worker.close()  # signaling drops: serve_links returns...
            await asyncio.wait_for(serving, 5)
            await first.send(b"a")  # ...and the open link keeps working
            assert await asyncio.wait_for(first.recv(), 5) == b"a"
            assert len(handlers) == 1
            # Re-register and serve again; cancelling (shutdown) closes its links.
            worker = await SignalingClient.connect(server.url)
            await worker.register(room_id="lab", role="worker", worker_key=WORKER_KEY)
            serving = asyncio.ensure_future(
                serve_links(worker, echo, loopback=True, handlers=handlers)
            )
            second = await connect()
            serving.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await serving
            with pytest.raises(LinkClosed):
                await asyncio.wait_for(second.recv(), 5)
            await first.send(b"b")  # the older handler was not this call's to cancel
            assert await asyncio.wait_for(first.recv(), 5) == b"b"
            await first.close()
            await worker.close()
            for _ in range(50):
                if not handlers:
                    break
                await asyncio.sleep(0.05)
            assert not handlers

    run(main())


@pytest.mark.parametrize("when", ["negotiating", "awaiting_answer", "caller_timeout"])
def test_cancelled_connect_leaves_no_open_peer_connection(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, when: str
) -> None:
    """A connect given up by its caller closes the peer connection it made.

    The cancellation lands at a known point: at the first await (while the offer is
    made), once the worker has received the offer (waiting for an answer that never
    comes), or by the caller's own deadline during that wait. Peer connections are
    tracked as they are created (no garbage-collector scans), and the test waits for
    their state to turn "closed" (bounded), never for a fixed time.
    """
    from aiortc import RTCPeerConnection

    from sleap_rtc.transport import webrtc

    created: list[RTCPeerConnection] = []

    class Tracked(RTCPeerConnection):  # type: ignore[misc]
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, **kwargs)
            created.append(self)

    monkeypatch.setattr(webrtc, "RTCPeerConnection", Tracked)

    async def main() -> None:
        async with signaling_server(tmp_path) as server, peers(server) as (worker, client):
            # w1 is registered but never answers; the caller gives up first.
            connecting = asyncio.ensure_future(offer_link(client, "w1", loopback=True, timeout=30))
            if when == "negotiating":
                await asyncio.sleep(0)  # the connect has started: its peer connection exists
                assert len(created) == 1
                connecting.cancel()
            else:
                offer = await worker.next_relayed("offer", timeout=20)
                assert offer.sender == client.peer_id and not connecting.done()
                if when == "caller_timeout":
                    with pytest.raises(TimeoutError):
                        async with asyncio.timeout(0.05):
                            await connecting
                else:
                    connecting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await connecting
            assert len(created) == 1
            pc = created[0]
            async with asyncio.timeout(10):  # the teardown runs in the background
                while pc.signalingState != "closed":
                    await asyncio.sleep(0.01)

    run(main())


# --- one member's stuck offers cannot block another member ---------------------------------


async def _stuck_offers(signaling: SignalingClient, n: int) -> list[Any]:
    """``n`` real offers whose ICE never completes (the answers are never applied)."""
    from aiortc import RTCPeerConnection

    from sleap_rtc.transport.loopback import loopback_candidates

    pcs = []
    for i in range(n):
        pc = RTCPeerConnection()
        pc.createDataChannel("sleap-rtc")
        with loopback_candidates(True):
            await pc.setLocalDescription(await pc.createOffer())
        await signaling.relay("offer", "w1", sdp=pc.localDescription.sdp, session=f"stuck-{i}")
        pcs.append(pc)
    return pcs


@pytest.mark.parametrize(("attackers", "max_pending"), [(1, 16), (4, 4)])
def test_stuck_offers_from_one_member_do_not_block_another(
    tmp_path: Path, attackers: int, max_pending: int
) -> None:
    async def main() -> float:
        async with (
            signaling_server(tmp_path) as server,
            peers(server) as (worker, client),
            Answerer(worker, loopback=True, timeout=15, max_pending=max_pending) as answerer,
        ):
            hostile = []
            pcs: list[Any] = []
            try:
                for _ in range(attackers):
                    sig = await SignalingClient.connect(server.url, timeout=5)
                    await sig.register(
                        room_id="lab", role="client", token=server.issuer.issue("mallory", "lab")
                    )
                    hostile.append(sig)
                    pcs += await _stuck_offers(sig, 16 // attackers)
                await asyncio.sleep(0.5)  # the worker has taken them all
                started = time.monotonic()
                link = await offer_link(client, "w1", loopback=True, timeout=10)
                theirs = await answerer.accept(timeout=10)
                took = time.monotonic() - started
                await link.send(b"served")
                assert await theirs.recv() == b"served"
                await link.close()
                await theirs.close()
                assert answerer.superseded >= 1
                assert len(answerer._pending) <= max_pending
                return took
            finally:
                for pc in pcs:
                    await pc.close()
                for sig in hostile:
                    await sig.close()

    took = run(main(), timeout=60)
    assert took < 5.0, took
