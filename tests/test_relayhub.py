"""relayhub.py: the worker's relay endpoint, with real ZMQ CURVE sockets on 127.0.0.1.

The relay side here is a DEALER in the test (the real relay process is in
test_relay.py); the attackers are DEALERs too: one without keys, one with a key the
hub never registered, one with another job's valid key claiming this job.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import stat
import time
from pathlib import Path

import pytest
import zmq
import zmq.asyncio
from support.relays import Collector, async_test, free_port

from sleap_rtc.worker.relayhub import KEY_FILE, RelayHub, RelayHubError
from sleap_rtc.worker.relaywire import (
    PROTOCOL,
    Command,
    Hello,
    Log,
    Progress,
    decode,
    encode,
)
from sleap_rtc.worker.zmqprogress import ProgressUpdate
from sleap_rtc_proto.v1 import progress_pb2

P = progress_pb2
END = ProgressUpdate(event=P.PROGRESS_EVENT_TRAIN_END)


async def hub_on(ctx: zmq.asyncio.Context, key_dir: Path, port: int | None = None) -> RelayHub:
    port = port or free_port()
    hub = RelayHub(ctx, listen=f"127.0.0.1:{port}", advertise=f"127.0.0.1:{port}", key_dir=key_dir)
    await hub.start()
    return hub


def dealer(
    ctx: zmq.asyncio.Context,
    hub: RelayHub,
    keys: tuple[str, str] | None,
    *,
    server_key: str | None = None,
) -> zmq.asyncio.Socket:
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    if keys is not None:
        sock.curve_publickey = keys[0].encode()
        sock.curve_secretkey = keys[1].encode()
        sock.curve_serverkey = (server_key or hub.server_key).encode()
    sock.connect(hub.endpoint)
    return sock


async def recv_command(sock: zmq.asyncio.Socket, timeout: float = 5.0) -> Command | None:
    if not await sock.poll(int(timeout * 1000)):
        return None
    msg = decode(await sock.recv_multipart())
    assert isinstance(msg, Command)
    return msg


async def until(test, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not test():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


@async_test
async def test_keys_are_private_and_survive_a_restart(
    ctx: zmq.asyncio.Context, tmp_path: Path
) -> None:
    key_dir = tmp_path / "state" / "relay"
    hub = await hub_on(ctx, key_dir)
    try:
        assert stat.S_IMODE(key_dir.stat().st_mode) == 0o700
        assert stat.S_IMODE((key_dir / KEY_FILE).stat().st_mode) == 0o600
        first = hub.server_key
        assert len(first) == 40 and hub.endpoint.startswith("tcp://127.0.0.1:")
    finally:
        await hub.close()
    again = RelayHub(ctx, listen="127.0.0.1:0", advertise="h:1", key_dir=key_dir)
    assert again.server_key == first
    (key_dir / KEY_FILE).write_text(json.dumps({"public": "x"}))
    with pytest.raises(RelayHubError, match="does not hold z85 CURVE keys"):
        RelayHub(ctx, listen="127.0.0.1:0", advertise="h:1", key_dir=key_dir)


@async_test
async def test_a_taken_port_is_a_clear_error(ctx: zmq.asyncio.Context, tmp_path: Path) -> None:
    hub = await hub_on(ctx, tmp_path / "k")
    port = int(hub.endpoint.rsplit(":", 1)[1])
    other_ctx = zmq.asyncio.Context()
    try:
        second = RelayHub(
            other_ctx, listen=f"127.0.0.1:{port}", advertise="x:1", key_dir=tmp_path / "k"
        )
        with pytest.raises(RelayHubError, match=f"127.0.0.1:{port}: the port is in use"):
            await second.start(retry_s=0.2)
    finally:
        other_ctx.destroy(linger=0)
        await hub.close()


@async_test
async def test_a_registered_relay_delivers_once_in_order_and_is_acked(
    ctx: zmq.asyncio.Context, tmp_path: Path
) -> None:
    hub = await hub_on(ctx, tmp_path / "k")
    got = Collector()
    keys = hub.new_keys()
    hub.register("job-a", keys[0], got)
    assert hub.send("job-a", "stop") is False  # no relay connected yet
    assert hub.last_heard("job-a") is None
    relay = dealer(ctx, hub, keys)
    try:
        await relay.send_multipart(encode(Hello("job-a", "node1", 42, None, assigned=0)))
        for seq in (1, 2, 2, 1, 3):  # duplicates, as after a reconnection
            await relay.send_multipart(encode(Log("job-a", seq, 1, (f"line {seq}",))))
        await got.wait_for(lambda: got.seqs() == [1, 2, 3], timeout=10)
        hello = got.of(Hello)[0]
        assert (hello.node, hello.relay_pid, hello.seq) == ("node1", 42, 0)
        assert got.lines() == ["line 1", "line 2", "line 3"]
        acks = []
        while (cmd := await recv_command(relay, 2.0)) is not None:
            acks.append(cmd)
            if cmd.upto == 3:
                break
        assert acks and acks[-1] == Command("ack", 3, "")
        assert hub.last_heard("job-a") is not None and hub.last_seq("job-a") == 3
        assert hub.send("job-a", "stop") is True
        cmd = await recv_command(relay)
        while cmd is not None and cmd.action == "ack":
            cmd = await recv_command(relay)
        assert cmd == Command("stop", 0, "job-a")
        assert hub.rejected == 0
    finally:
        relay.close(linger=0)
        await hub.close()


@async_test
async def test_after_a_worker_restart_what_was_delivered_is_not_delivered_again(
    ctx: zmq.asyncio.Context, tmp_path: Path
) -> None:
    hub = await hub_on(ctx, tmp_path / "k")
    got = Collector()
    keys = hub.new_keys()
    hub.register("job-a", keys[0], got, after_seq=2)
    relay = dealer(ctx, hub, keys)
    try:
        await relay.send_multipart(encode(Hello("job-a", "n", 1, 7, assigned=3)))
        for seq in (1, 2, 3):
            await relay.send_multipart(encode(Log("job-a", seq, 1, (str(seq),))))
        await got.wait_for(lambda: got.seqs() == [3])
        assert got.of(Hello)[0].seq == 2  # the Hello tells the stream's position
        first = await recv_command(relay)
        assert first is not None and first.action == "ack" and first.upto == 2
    finally:
        relay.close(linger=0)
        await hub.close()


@async_test
async def test_unauthenticated_senders_cannot_inject_progress_or_steer_a_job(
    ctx: zmq.asyncio.Context, tmp_path: Path
) -> None:
    """Three attackers try to inject a train_end and a command into job A: a DEALER
    without keys, one with a key pair the hub never registered, and the relay of job B
    (a valid key) claiming to be job A. Nothing reaches job A (or B), the hub counts
    every refusal, A's route is not taken over (a stop for A still reaches A's relay
    and none of the attackers), and A keeps working."""
    hub = await hub_on(ctx, tmp_path / "k")
    got_a, got_b = Collector(), Collector()
    keys_a, keys_b = hub.new_keys(), hub.new_keys()
    hub.register("job-a", keys_a[0], got_a)
    hub.register("job-b", keys_b[0], got_b)
    relay_a = dealer(ctx, hub, keys_a)
    plain = dealer(ctx, hub, None)
    stranger = dealer(ctx, hub, hub.new_keys())
    wrong_server = dealer(ctx, hub, keys_a, server_key=hub.new_keys()[0])
    impostor = dealer(ctx, hub, keys_b)
    attackers = [plain, stranger, wrong_server, impostor]
    try:
        await relay_a.send_multipart(encode(Log("job-a", 1, 1, ("real",))))
        await got_a.wait_for(lambda: got_a.seqs() == [1])
        inject = [
            encode(Progress("job-a", 2, END)),
            encode(Hello("job-a", "evil", 666, None, assigned=99)),
            encode(Command("stop", 0, "job-a")),
            [PROTOCOL, b"progress", b"{not json"],
        ]
        for _ in range(3):
            for sock in attackers:
                for frames in inject:
                    with contextlib.suppress(zmq.Again):  # refused: no connection to queue on
                        await sock.send_multipart(frames, flags=zmq.NOBLOCK)
            await asyncio.sleep(0.2)
        # The impostor's messages arrive (its key is valid) and are refused one by
        # one; the others never complete a handshake (counted by the monitor).
        await until(lambda: hub.rejected >= 3 * len(inject) + 2, timeout=10)
        assert got_a.seqs() == [1] and not got_a.of(Hello) and not got_a.of(Progress)
        assert got_b.messages == []
        assert hub.last_heard("job-b") is None  # B's key spoke, but not as B
        assert hub.send("job-b", "stop") is False  # and it has no route as B
        assert hub.send("job-a", "stop") is True
        cmd = await recv_command(relay_a)
        while cmd is not None and cmd.action == "ack":
            cmd = await recv_command(relay_a)
        assert cmd == Command("stop", 0, "job-a")
        for sock in attackers:  # not one attacker heard the stop (or anything else)
            assert await sock.poll(200) == 0
        await relay_a.send_multipart(encode(Log("job-a", 2, 1, ("still here",))))
        await got_a.wait_for(lambda: got_a.seqs() == [1, 2])
    finally:
        for sock in [relay_a, *attackers]:
            sock.close(linger=0)
        await hub.close()


@async_test
async def test_an_unregistered_job_key_is_refused_at_the_handshake(
    ctx: zmq.asyncio.Context, tmp_path: Path
) -> None:
    hub = await hub_on(ctx, tmp_path / "k")
    got = Collector()
    keys = hub.new_keys()
    hub.register("job-a", keys[0], got)
    hub.unregister("job-a")  # the job ended: its key no longer gets in
    hub.register("job-b", hub.new_keys()[0], Collector())
    sock = dealer(ctx, hub, keys)
    try:
        await until(lambda: hub.rejected >= 1)
        with pytest.raises(zmq.Again):  # no connection was ever established
            await sock.send_multipart(encode(Log("job-a", 1, 1, ("x",))), flags=zmq.NOBLOCK)
        assert got.messages == []
    finally:
        sock.close(linger=0)
        await hub.close()


@async_test
async def test_a_failing_handler_and_bad_frames_leave_the_hub_working(
    ctx: zmq.asyncio.Context, tmp_path: Path
) -> None:
    hub = await hub_on(ctx, tmp_path / "k")
    seen: list[int] = []

    def handler(msg: object) -> None:
        seen.append(msg.seq)  # type: ignore[attr-defined]
        if len(seen) == 1:
            raise RuntimeError("the job's handler broke")

    keys = hub.new_keys()
    hub.register("job-a", keys[0], handler)
    relay = dealer(ctx, hub, keys)
    try:
        await relay.send_multipart(encode(Log("job-a", 1, 1, ("a",))))
        await relay.send_multipart([PROTOCOL, b"log", b"\xff\xfe"])
        await relay.send_multipart([b"x"])
        await relay.send_multipart(encode(Log("job-a", 2, 1, ("b",))))
        await until(lambda: seen == [1, 2])
        assert hub.rejected == 2
    finally:
        relay.close(linger=0)
        await hub.close()


def test_hubs_one_after_another_in_one_event_loop_all_authenticate(tmp_path: Path) -> None:
    """A worker's event loop lives long: hubs (and their contexts) come and go in it.
    Each new hub still answers the handshakes (pyzmq's AsyncioAuthenticator missed them
    all after an earlier context of the loop was destroyed)."""

    async def go() -> None:
        for round_ in range(3):
            ctx = zmq.asyncio.Context()
            try:
                hub = await hub_on(ctx, tmp_path / "k")
                got = Collector()
                keys = hub.new_keys()
                hub.register("job-a", keys[0], got)
                relay = dealer(ctx, hub, keys)
                await relay.send_multipart(encode(Log("job-a", 1, 1, (str(round_),))))
                await got.wait_for(lambda: got.seqs() == [1], timeout=15)  # noqa: B023
                relay.close(linger=0)
                await hub.close()
            finally:
                ctx.destroy(linger=0)

    asyncio.run(asyncio.wait_for(go(), 60))
