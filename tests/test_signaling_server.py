"""The signaling server over real loopback websockets: auth, rooms, relay, bad input, limits."""

from __future__ import annotations

import asyncio
import contextlib
import json
import urllib.request
from pathlib import Path
from typing import Any

import jwt
import pytest
from rtc_helpers import OTHER_KEY, WORKER_KEY, ask, recv_json, run, send_json, signaling_server
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from sleap_rtc.auth.tokens import TokenIssuer
from sleap_rtc.signaling.limits import TokenBucket
from sleap_rtc.signaling.protocol import worker_metadata
from sleap_rtc.signaling.server import KEY_FILE, ROOMS_FILE, serve_signaling


def register_worker(
    peer_id: str, room: str = "lab", key: str = WORKER_KEY, **props: Any
) -> dict[str, Any]:
    return {
        "type": "register",
        "peer_id": peer_id,
        "room_id": room,
        "role": "worker",
        "worker_key": key,
        "metadata": worker_metadata(name=peer_id, gpu="H100", mounts=["/data"], **props),
    }


def register_client(token: str, room: str = "lab", peer_id: str | None = None) -> dict[str, Any]:
    msg: dict[str, Any] = {"type": "register", "room_id": room, "role": "client", "jwt": token}
    if peer_id:
        msg["peer_id"] = peer_id
    return msg


def test_register_worker_and_client_discover(tmp_path: Path) -> None:
    async def main() -> None:
        async with (
            signaling_server(tmp_path) as server,
            connect(server.url) as w,
            connect(server.url) as c,
        ):
            reply = await ask(w, register_worker("w1"))
            assert reply["type"] == "registered_auth"
            assert reply["peer_id"] == "w1" and reply["room_id"] == "lab"
            assert reply["ice_servers"] == []
            token = server.issuer.issue("alice", "lab")
            reply = await ask(c, register_client(token))
            assert reply["type"] == "registered_auth"
            assert [p["peer_id"] for p in reply["peer_list"]] == ["w1"]
            listing = await ask(c, {"type": "discover_peers", "filters": {"role": "worker"}})
            assert listing["type"] == "peer_list" and listing["count"] == 1
            props = listing["peers"][0]["metadata"]["properties"]
            assert props["gpu"] == "H100" and props["status"] == "available"
            assert props["mounts"] == ["/data"]

    run(main())


def test_state_dir_gets_private_key_and_default_room(tmp_path: Path) -> None:
    async def main() -> None:
        server = await serve_signaling(state_dir=tmp_path)
        try:
            assert (tmp_path / KEY_FILE).stat().st_mode & 0o777 == 0o600
            assert (tmp_path / ROOMS_FILE).stat().st_mode & 0o777 == 0o600
            assert "default" in server.rooms
        finally:
            await server.close()
        # A restart keeps the key: tokens issued before still verify.
        again = await serve_signaling(state_dir=tmp_path)
        try:
            assert again.issuer.key_id == server.issuer.key_id
        finally:
            await again.close()

    run(main())


@pytest.mark.parametrize(
    ("msg", "code"),
    [
        ({"type": "register", "room_id": "lab", "role": "worker"}, "missing_credentials"),
        (
            {"type": "register", "room_id": "lab", "role": "worker", "worker_key": "nope-nope"},
            "bad_credentials",
        ),
        (
            {"type": "register", "room_id": "nowhere", "role": "worker", "worker_key": WORKER_KEY},
            "bad_credentials",
        ),
        (
            {"type": "register", "room_id": "lab", "role": "worker", "worker_key": OTHER_KEY},
            "bad_credentials",
        ),
        ({"type": "register", "room_id": "lab", "role": "client"}, "missing_credentials"),
        ({"type": "register", "room_id": "lab", "role": "client", "jwt": "garbage"}, "bad_token"),
        ({"type": "register", "room_id": "lab", "role": "admin", "jwt": "x"}, "bad_field"),
        ({"type": "register", "role": "client"}, "missing_field"),
        ({"type": "register", "room_id": "../etc", "role": "client"}, "bad_field"),
    ],
)
def test_bad_registrations_are_refused(tmp_path: Path, msg: dict[str, Any], code: str) -> None:
    async def main() -> None:
        async with signaling_server(tmp_path) as server, connect(server.url) as ws:
            reply = await ask(ws, {**msg, "request_id": "r1"})
            assert reply["type"] == "error"
            assert reply["code"] == code, reply
            assert reply["reason"] and reply["request_id"] == "r1"
            # Still not registered: commands are refused.
            reply = await ask(ws, {"type": "discover_peers"})
            assert reply["code"] == "not_registered"

    run(main())


def test_token_faults(tmp_path: Path) -> None:
    async def main() -> None:
        async with signaling_server(tmp_path) as server:
            issuer = server.issuer
            stranger = TokenIssuer.generate()
            expired = issuer.issue("alice", "lab", ttl_s=10, now=1_000_000)
            other_room = issuer.issue("alice", "other")
            forged = stranger.issue("alice", "lab")
            # Same key id as the server's, signed with another key.
            forged_kid = jwt.encode(
                jwt.decode(issuer.issue("alice", "lab"), options={"verify_signature": False}),
                stranger._key,
                algorithm="EdDSA",
                headers={"kid": issuer.key_id},
            )
            claims = jwt.decode(issuer.issue("alice", "lab"), options={"verify_signature": False})
            alg_none = jwt.encode(claims, None, algorithm="none")  # type: ignore[arg-type]
            hs256 = jwt.encode(claims, "a-secret-of-32-bytes-or-more-000000", algorithm="HS256")
            cases = {
                "expired": expired,
                "wrong_room": other_room,
                "unknown_key": forged,
                "bad_signature": forged_kid,
                "unsupported_alg": alg_none,
            }
            for reason, token in {**cases, "unsupported_alg ": hs256}.items():
                async with connect(server.url) as ws:
                    reply = await ask(ws, register_client(token))
                    assert reply["type"] == "error" and reply["code"] == "bad_token", reply
                    assert reply["reason"].startswith(reason.strip()), reply
            # The good token still works on a fresh connection.
            async with connect(server.url) as ws:
                reply = await ask(ws, register_client(issuer.issue("alice", "lab")))
                assert reply["type"] == "registered_auth"

    run(main())


def test_room_isolation(tmp_path: Path) -> None:
    async def main() -> None:
        async with (
            signaling_server(tmp_path) as server,
            connect(server.url) as w_lab,
            connect(server.url) as w_other,
            connect(server.url) as c_lab,
            connect(server.url) as c_other,
        ):
            await ask(w_lab, register_worker("w-lab"))
            await ask(w_other, register_worker("w-other", room="other", key=OTHER_KEY))
            await ask(c_lab, register_client(server.issuer.issue("a", "lab")))
            reply = await ask(
                c_other, register_client(server.issuer.issue("b", "other"), room="other")
            )
            assert [p["peer_id"] for p in reply["peer_list"]] == ["w-other"]

            listing = await ask(c_lab, {"type": "discover_peers", "filters": {}})
            assert [p["peer_id"] for p in listing["peers"]] == ["w-lab"]
            listing = await ask(c_other, {"type": "discover_peers"})
            assert [p["peer_id"] for p in listing["peers"]] == ["w-other"]
            # Asking for another room's list is refused, not answered.
            reply = await ask(c_lab, {"type": "discover_peers", "filters": {"room_id": "other"}})
            assert reply["type"] == "error" and reply["code"] == "forbidden"
            # Offers across rooms look exactly like offers to nobody.
            reply = await ask(c_lab, {"type": "offer", "target": "w-other", "sdp": "v=0"})
            assert reply["type"] == "error" and reply["code"] == "unknown_peer"
            reply = await ask(c_lab, {"type": "offer", "target": "ghost", "sdp": "v=0"})
            assert reply["code"] == "unknown_peer"
            # Clients cannot list clients.
            reply = await ask(c_lab, {"type": "discover_peers", "filters": {"role": "client"}})
            assert reply["code"] == "forbidden"
            # Nothing reached the other room's worker.
            with pytest.raises(TimeoutError):
                await recv_json(w_other, timeout=0.2)

    run(main())


def test_relay_uses_the_registered_sender(tmp_path: Path) -> None:
    async def main() -> None:
        async with (
            signaling_server(tmp_path) as server,
            connect(server.url) as w,
            connect(server.url) as c,
        ):
            await ask(w, register_worker("w1"))
            await ask(c, register_client(server.issuer.issue("a", "lab"), peer_id="c1"))
            reply = await ask(
                c,
                {
                    "type": "offer",
                    "target": "w1",
                    "sdp": "v=0 offer",
                    "sender": "w1",
                    "session": "s1",
                    "request_id": "x",
                },
            )
            assert reply == {
                "type": "relayed",
                "relay_type": "offer",
                "target": "w1",
                "request_id": "x",
            }
            offer = await recv_json(w)
            assert offer["type"] == "offer" and offer["sender"] == "c1"  # not the forged field
            assert offer["sdp"] == "v=0 offer" and offer["session"] == "s1"
            reply = await ask(w, {"type": "answer", "target": "c1", "sdp": "v=0 answer"})
            assert reply["type"] == "relayed"
            answer = await recv_json(c)
            assert answer["type"] == "answer" and answer["sender"] == "w1"
            # Offer without sdp, or to itself.
            reply = await ask(c, {"type": "offer", "target": "w1"})
            assert reply["code"] == "missing_field"
            reply = await ask(c, {"type": "offer", "target": "c1", "sdp": "x"})
            assert reply["code"] == "unknown_peer"
            # Roles: offers only reach workers, answers only clients.
            async with connect(server.url) as squatter:
                token = server.issuer.issue("m", "lab")
                await ask(squatter, register_client(token, peer_id="c2"))
                reply = await ask(c, {"type": "offer", "target": "c2", "sdp": "x"})
                assert reply["code"] == "unknown_peer"
                reply = await ask(c, {"type": "answer", "target": "w1", "sdp": "x"})
                assert reply["code"] == "forbidden"
                reply = await ask(w, {"type": "offer", "target": "c1", "sdp": "x"})
                assert reply["code"] == "unknown_peer"
                with pytest.raises(TimeoutError):
                    await recv_json(squatter, timeout=0.2)

    run(main())


def test_duplicate_peer_id_and_reregister(tmp_path: Path) -> None:
    async def main() -> None:
        async with signaling_server(tmp_path) as server:
            async with connect(server.url) as a, connect(server.url) as b:
                assert (await ask(a, register_worker("w1")))["type"] == "registered_auth"
                assert (await ask(a, register_worker("w2")))["code"] == "already_registered"
                assert (await ask(b, register_worker("w1")))["code"] == "peer_id_taken"
            # Once the first connection is gone, the id is free again.
            async with connect(server.url) as c:
                for _ in range(50):
                    reply = await ask(c, register_worker("w1"))
                    if reply["type"] == "registered_auth":
                        break
                    await asyncio.sleep(0.02)
                assert reply["type"] == "registered_auth"

    run(main())


def test_update_metadata_busy_status(tmp_path: Path) -> None:
    async def main() -> None:
        async with (
            signaling_server(tmp_path) as server,
            connect(server.url) as w,
            connect(server.url) as c,
        ):
            await ask(w, register_worker("w1"))
            await ask(c, register_client(server.issuer.issue("a", "lab")))
            busy = worker_metadata(name="w1", status="busy")
            reply = await ask(w, {"type": "update_metadata", "metadata": busy})
            assert reply["type"] == "metadata_updated"
            listing = await ask(c, {"type": "discover_peers"})
            assert listing["peers"][0]["metadata"]["properties"]["status"] == "busy"
            bad = await ask(w, {"type": "update_metadata", "metadata": {"tags": "x"}})
            assert bad["code"] == "bad_field"

    run(main())


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        ("not json at all", "bad_json"),
        (b"\xff\xfe\x00binary garbage", "bad_json"),
        ("[1, 2, 3]", "bad_message"),
        ('{"no_type": 1}', "missing_field"),
        ('{"type": "launch_missiles"}', "unknown_type"),
        ('{"type": 7}', "missing_field"),
        ("{" * 10, "bad_json"),
        (json.dumps({"type": "ping", "pad": "x" * (70 * 1024)}), "too_large"),
    ],
)
def test_garbage_gets_an_error_and_the_server_keeps_serving(
    tmp_path: Path, payload: str | bytes, code: str
) -> None:
    async def main() -> None:
        async with (
            signaling_server(tmp_path) as server,
            connect(server.url) as bad,
            connect(server.url) as good,
        ):
            await ask(good, register_worker("w1"))
            await bad.send(payload)
            reply = await recv_json(bad)
            assert reply["type"] == "error" and reply["code"] == code, reply
            assert reply["reason"]
            # The same connection still works, and so does everyone else.
            assert (await ask(bad, {"type": "ping"}))["type"] == "pong"
            assert (await ask(good, {"type": "discover_peers"}))["type"] == "peer_list"

    run(main())


def test_message_over_hard_limit_closes_only_that_connection(tmp_path: Path) -> None:
    async def main() -> None:
        async with (
            signaling_server(tmp_path, hard_max_bytes=128 * 1024) as server,
            connect(server.url, max_size=None) as bad,
            connect(server.url) as good,
        ):
            await bad.send("x" * (256 * 1024))
            with pytest.raises(ConnectionClosed) as info:
                await asyncio.wait_for(bad.recv(), 5)
            assert info.value.rcvd is not None and info.value.rcvd.code == 1009
            assert (await ask(good, {"type": "ping"}))["type"] == "pong"

    run(main())


def test_rate_limit(tmp_path: Path) -> None:
    async def main() -> None:
        async with (
            signaling_server(tmp_path, rate_per_s=5.0, burst=5, max_rate_violations=30) as server,
            connect(server.url) as ws,
            connect(server.url) as other,
        ):
            for i in range(20):
                await send_json(ws, {"type": "ping", "request_id": f"p{i}"})
            replies = [await recv_json(ws) for _ in range(20)]
            limited = [r for r in replies if r["type"] == "error"]
            assert len(limited) >= 10
            assert all(r["code"] == "rate_limited" for r in limited)
            assert limited[0]["request_id"].startswith("p")
            # Another connection is not affected.
            assert (await ask(other, {"type": "ping"}))["type"] == "pong"
            # Keep flooding: the connection is closed (policy violation).
            with pytest.raises(ConnectionClosed):
                for _ in range(200):
                    await send_json(ws, {"type": "ping"})
                    await asyncio.sleep(0)
                while True:
                    await asyncio.wait_for(ws.recv(), 5)
            assert (await ask(other, {"type": "ping"}))["type"] == "pong"

    run(main())


def test_token_bucket_refills() -> None:
    bucket = TokenBucket(rate=2.0, burst=2, now=0.0)
    assert bucket.take(0.0) and bucket.take(0.0) and not bucket.take(0.0)
    assert bucket.take(0.5) and not bucket.take(0.5)


def test_stale_peer_is_dropped(tmp_path: Path) -> None:
    async def main() -> None:
        async with (
            signaling_server(
                tmp_path, ping_interval_s=0.2, ping_timeout_s=0.3, close_timeout_s=0.2
            ) as server,
            connect(server.url) as stale,
            connect(server.url) as c,
        ):
            await ask(stale, register_worker("w-stale"))
            await ask(c, register_client(server.issuer.issue("a", "lab")))
            assert (await ask(c, {"type": "discover_peers"}))["count"] == 1
            # The worker's machine freezes: it stops reading, so pings go unanswered.
            stale.transport.pause_reading()
            for _ in range(60):
                await asyncio.sleep(0.1)
                if (await ask(c, {"type": "discover_peers"}))["count"] == 0:
                    break
            assert (await ask(c, {"type": "discover_peers"}))["count"] == 0
            assert "w-stale" not in server.registry
            stale.transport.abort()  # do not wait for the frozen side's close handshake

    run(main())


def test_unregistered_connection_times_out(tmp_path: Path) -> None:
    async def main() -> None:
        async with (
            signaling_server(tmp_path, register_timeout_s=0.3) as server,
            connect(server.url) as ws,
        ):
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 5)

    run(main())


def test_jwks_over_socket_and_http(tmp_path: Path) -> None:
    async def main() -> None:
        async with signaling_server(tmp_path) as server:
            async with connect(server.url) as ws:
                reply = await ask(ws, {"type": "jwks"})
            assert reply["keys"] == server.issuer.jwks()["keys"]
            url = server.http_url + "/.well-known/jwks.json"
            body = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=5).read())
            assert json.loads(body) == server.issuer.jwks()
            health = server.http_url + "/healthz"
            assert (
                await asyncio.to_thread(lambda: urllib.request.urlopen(health, timeout=5).status)
                == 200
            )

    run(main())


# --- nobody locks others out ---------------------------------------------------------------


async def _connect_from(server: Any, address: str) -> Any:
    """A websocket from a given loopback source address (127.0.0.0/8 is all loopback)."""
    return await connect(server.url, local_addr=(address, 0), open_timeout=5)


def test_a_flood_of_sockets_that_never_register_cannot_keep_peers_out(tmp_path: Path) -> None:
    """1,050 sockets that never register (from one address, then from many): a normal
    client still connects, registers and discovers at once, every time."""

    async def main() -> None:
        async with signaling_server(tmp_path, register_timeout_s=5.0) as server:
            worker = await connect(server.url)
            assert (await ask(worker, register_worker("w1")))["type"] == "registered_auth"
            token = server.issuer.issue("alice", "lab")
            idle: list[Any] = []
            try:
                for n in range(1050):  # bounded: one pass
                    source = "127.0.0.2" if n < 525 else f"127.0.{1 + n % 200}.3"
                    with contextlib.suppress(OSError, ConnectionClosed, TimeoutError):
                        idle.append(await _connect_from(server, source))
                assert len(server.unregistered) <= server.limits.max_unregistered
                assert len(server._all) <= server.limits.max_connections
                for _ in range(3):
                    async with connect(server.url) as c:
                        reply = await ask(c, register_client(token))
                        assert reply["type"] == "registered_auth", reply
                        listing = await ask(c, {"type": "discover_peers"})
                        assert listing["type"] == "peer_list" and listing["count"] == 1
                # the registered worker was never touched
                assert (await ask(worker, {"type": "ping"}))["type"] == "pong"
                assert server.unregistered.evicted >= 1050 - server.limits.max_unregistered
            finally:
                await asyncio.gather(*(ws.close() for ws in idle), return_exceptions=True)
                await worker.close()

    run(main(), timeout=120)


def test_an_unregistered_socket_is_closed_at_the_short_deadline(tmp_path: Path) -> None:
    async def main() -> None:
        async with signaling_server(tmp_path) as server:
            assert server.limits.register_timeout_s <= 5.0
            async with connect(server.url) as ws:
                with pytest.raises(ConnectionClosed):
                    await asyncio.wait_for(ws.recv(), server.limits.register_timeout_s + 3)
                assert ws.close_code == 1008

    run(main(), timeout=20)


def test_wrong_passphrases_lock_out_only_their_source(tmp_path: Path) -> None:
    async def main() -> None:
        async with signaling_server(tmp_path, max_login_failures=3) as server:
            attacker = await _connect_from(server, "127.0.0.2")
            try:
                for i in range(10):
                    reply = await ask(attacker, {"type": "login", "room_id": "lab",
                                                 "user": "x", "secret": f"guess-{i}"})
                    assert reply["code"] == ("bad_credentials" if i < 3 else "rate_limited")
                assert "from your address" in reply["reason"]
                # another address logs in to the same room at once
                async with connect(server.url) as user:
                    ok = await ask(user, {"type": "login", "room_id": "lab", "user": "ann",
                                          "secret": "open sesame"})
                    assert ok["type"] == "token", ok
            finally:
                await attacker.close()

    run(main())


def test_login_failures_remembered_are_bounded(tmp_path: Path) -> None:
    from sleap_rtc.signaling.protocol import MessageError
    from sleap_rtc.signaling.web import LoginDesk

    desk = LoginDesk({}, TokenIssuer.generate(), max_failures=2, max_sources=100)
    for n in range(1000):
        with pytest.raises(MessageError):
            desk.issue("lab", "u", "wrong", source=f"10.0.{n // 250}.{n % 250}")
    assert len(desk._failures) == 100


@pytest.mark.parametrize(
    "raw",
    [
        "[" * 30_000 + "]" * 30_000,
        '{"type": "ping", "x": ' + "[" * 20_000 + "]" * 20_000 + "}",
        "{" * 20_000,
    ],
)
def test_deep_json_is_bad_json_without_a_traceback(
    tmp_path: Path, raw: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        async with (
            signaling_server(tmp_path, max_message_bytes=128 * 1024) as server,
            connect(server.url, max_size=None) as ws,
        ):
            for _ in range(3):
                await ws.send(raw)
                reply = await recv_json(ws)
                assert reply["type"] == "error" and reply["code"] == "bad_json", reply
            assert (await ask(ws, {"type": "ping"}))["type"] == "pong"  # still usable

    run(main())
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"
