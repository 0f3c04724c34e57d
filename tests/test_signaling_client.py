"""The signaling client against the real server: replies, server errors surfaced, timeouts."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from pathlib import Path

import pytest
from rtc_helpers import OTHER_KEY, WORKER_KEY, run, signaling_server
from websockets.asyncio.server import ServerConnection, serve

from sleap_rtc.signaling.client import PeerInfo, SignalingClient, SignalingError
from sleap_rtc.signaling.protocol import worker_metadata


def test_register_discover_update(tmp_path: Path) -> None:
    async def main() -> None:
        async with (
            signaling_server(tmp_path) as server,
            await SignalingClient.connect(server.url) as worker,
            await SignalingClient.connect(server.url) as client,
        ):
            reg = await worker.register(
                room_id="lab",
                role="worker",
                worker_key=WORKER_KEY,
                peer_id="gpu-1",
                metadata=worker_metadata(name="GPU box", gpu="A100", versions={"sleap-rtc": "0.1"}),
            )
            assert reg.peer_id == "gpu-1" and reg.room_id == "lab" and reg.peers == []
            assert worker.peer_id == "gpu-1" and worker.ice_servers == []
            creg = await client.register(
                room_id="lab", role="client", token=server.issuer.issue("alice", "lab")
            )
            assert [p.peer_id for p in creg.peers] == ["gpu-1"]
            found = await client.discover()
            assert found == creg.peers
            info: PeerInfo = found[0]
            assert info.name == "GPU box" and info.status == "available"
            assert info.properties["gpu"] == "A100"
            await worker.update_metadata(worker_metadata(name="GPU box", status="busy"))
            assert (await client.discover())[0].status == "busy"
            jwks = await client.jwks()
            assert jwks == server.issuer.jwks()

    run(main())


def test_server_errors_are_raised_with_code_and_reason(tmp_path: Path) -> None:
    async def main() -> None:
        async with (
            signaling_server(tmp_path) as server,
            await SignalingClient.connect(server.url) as sig,
        ):
            with pytest.raises(SignalingError) as info:
                await sig.discover()
            assert info.value.code == "not_registered"
            with pytest.raises(SignalingError) as info:
                await sig.register(room_id="lab", role="worker", worker_key=OTHER_KEY)
            assert info.value.code == "bad_credentials" and info.value.is_auth
            assert "worker key" in info.value.reason
            expired = server.issuer.issue("a", "lab", ttl_s=1, now=time.time() - 3600)
            with pytest.raises(SignalingError) as info:
                await sig.register(room_id="lab", role="client", token=expired)
            assert info.value.code == "bad_token" and "expired" in info.value.reason
            await sig.register(room_id="lab", role="client", token=server.issuer.issue("a", "lab"))
            with pytest.raises(SignalingError) as info:
                await sig.relay("offer", "nobody", sdp="v=0")
            assert info.value.code == "unknown_peer" and "nobody" in str(info.value)

    run(main())


def test_relayed_messages_are_matched_by_sender_and_session(tmp_path: Path) -> None:
    async def main() -> None:
        async with (
            signaling_server(tmp_path) as server,
            await SignalingClient.connect(server.url) as w,
            await SignalingClient.connect(server.url) as c1,
            await SignalingClient.connect(server.url) as c2,
        ):
            await w.register(room_id="lab", role="worker", worker_key=WORKER_KEY, peer_id="w")
            token = server.issuer.issue("a", "lab")
            await c1.register(room_id="lab", role="client", token=token, peer_id="c1")
            await c2.register(room_id="lab", role="client", token=token, peer_id="c2")
            await c1.relay("offer", "w", sdp="sdp-1", session="s1")
            await c2.relay("offer", "w", sdp="sdp-2", session="s2")
            second = await w.next_relayed("offer", sender="c2", timeout=2)
            first = await w.next_relayed("offer", timeout=2)
            assert (first.sender, first.sdp, first.session) == ("c1", "sdp-1", "s1")
            assert (second.sender, second.sdp) == ("c2", "sdp-2")
            await w.relay("answer", "c2", sdp="ans-2", session="s2")
            got = await c2.next_relayed("answer", sender="w", session="s2", timeout=2)
            assert got.sdp == "ans-2"
            with pytest.raises(SignalingError) as info:
                await c1.next_relayed("answer", timeout=0.2)
            assert info.value.code == "timeout"

    run(main())


def test_unreachable_server() -> None:
    async def main() -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        with pytest.raises(SignalingError) as info:
            await SignalingClient.connect(f"ws://127.0.0.1:{port}", timeout=2)
        assert info.value.code == "unreachable"
        with pytest.raises(SignalingError):
            await SignalingClient.connect("not a url", timeout=2)

    run(main())


def test_silent_server_times_out_and_closed_server_fails_waiters() -> None:
    async def main() -> None:
        async def silent(ws: ServerConnection) -> None:  # accepts, never answers
            try:
                async for _ in ws:
                    pass
            except Exception:
                pass

        async with serve(silent, "127.0.0.1", 0) as srv:
            port = srv.sockets[0].getsockname()[1]
            sig = await SignalingClient.connect(f"ws://127.0.0.1:{port}", timeout=0.3)
            t0 = time.monotonic()
            with pytest.raises(SignalingError) as info:
                await sig.register(room_id="lab", role="worker", worker_key=WORKER_KEY)
            assert info.value.code == "timeout" and time.monotonic() - t0 < 2
            waiter = asyncio.ensure_future(sig.next_relayed("offer", timeout=float("inf")))
            await asyncio.sleep(0.05)
            srv.close()  # the server goes away: the waiter is told, not left hanging
            with pytest.raises(SignalingError) as info:
                await asyncio.wait_for(waiter, 5)
            assert info.value.code == "closed"
            assert sig.closed
            with pytest.raises(SignalingError):
                await sig.discover()
            await sig.close()

    run(main())


def test_a_cancellation_that_meets_the_reply_is_not_swallowed(tmp_path: Path) -> None:
    """The reply and the caller's cancellation land in the same loop iteration: the
    request ends cancelled (Python 3.11's asyncio.wait_for would return the reply and
    drop the cancellation, which hangs whoever cancelled)."""

    async def main() -> None:
        async with (
            signaling_server(tmp_path) as server,
            await SignalingClient.connect(server.url) as sig,
        ):
            await sig.register(room_id="lab", role="worker", worker_key=WORKER_KEY)
            sig._reader.cancel()  # nothing but this test answers the request below
            with contextlib.suppress(asyncio.CancelledError):
                await sig._reader
            sig._closed_reason = None  # still "open" for the request's purposes
            asking = asyncio.ensure_future(sig.discover(timeout=10))
            while not sig._pending:
                await asyncio.sleep(0)
            (fut,) = sig._pending.values()
            fut.set_result({"type": "peer_list", "peers": []})
            asking.cancel()
            with pytest.raises(asyncio.CancelledError):
                await asking

    run(main())
