"""Transport and signaling across real processes on loopback: a signaling server process, a
worker process answering offers, and the test as the client."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import aioice.ice
import pytest
from rtc_helpers import OTHER_KEY, ROOMS, WORKER_KEY, run

from sleap_rtc.auth.tokens import TokenIssuer
from sleap_rtc.signaling.client import SignalingClient, SignalingError
from sleap_rtc.signaling.rooms import save_rooms
from sleap_rtc.signaling.server import KEY_FILE
from sleap_rtc.transport.link import LinkClosed
from sleap_rtc.transport.webrtc import make_connector

pytestmark = pytest.mark.e2e

SERVER = r"""
import asyncio, sys
from pathlib import Path
from sleap_rtc.signaling.server import serve_signaling
async def main():
    server = await serve_signaling(state_dir=Path(sys.argv[1]), rooms_file=Path(sys.argv[2]))
    print(server.url, flush=True)
    await server.serve_forever()
asyncio.run(main())
"""

WORKER = r"""
import asyncio, sys
from sleap_rtc.signaling.client import SignalingClient
from sleap_rtc.signaling.protocol import worker_metadata
from sleap_rtc.transport.link import LinkClosed
from sleap_rtc.transport.answerer import serve_links
async def echo(link):
    while True:
        try:
            frame = await link.recv()
        except LinkClosed:
            return
        await link.send(frame[::-1])
async def main():
    url, room, key, peer_id = sys.argv[1:5]
    sig = await SignalingClient.connect(url)
    await sig.register(room_id=room, role="worker", worker_key=key, peer_id=peer_id,
                       metadata=worker_metadata(name=peer_id))
    print("ready", flush=True)
    await serve_links(sig, echo, loopback=True)
    print("signaling ended", flush=True)
    await asyncio.Event().wait()  # like the CLI: keep serving open links, re-register later
asyncio.run(main())
"""


class Proc:
    def __init__(self, code: str, *args: str) -> None:
        self.p = subprocess.Popen(
            [sys.executable, "-c", code, *args],
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )

    def line(self, timeout: float = 20.0) -> str:
        assert self.p.stdout is not None
        deadline = time.monotonic() + timeout
        import selectors

        sel = selectors.DefaultSelector()
        sel.register(self.p.stdout, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if sel.select(timeout=0.1):
                return self.p.stdout.readline().strip()
            if self.p.poll() is not None:
                raise RuntimeError(f"process exited with {self.p.returncode}")
        raise TimeoutError("process printed nothing")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.p.poll() is None:
            self.p.send_signal(sig)
            try:
                self.p.wait(10)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait(10)


@contextlib.contextmanager
def processes() -> Iterator[list[Proc]]:
    procs: list[Proc] = []
    try:
        yield procs
    finally:
        for proc in procs:
            proc.stop()


def start_server(tmp_path: Path, procs: list[Proc]) -> tuple[str, TokenIssuer]:
    rooms = tmp_path / "rooms.toml"
    save_rooms(rooms, ROOMS)
    server = Proc(SERVER, str(tmp_path / "state"), str(rooms))
    procs.append(server)
    url = server.line()
    assert url.startswith("ws://127.0.0.1:")
    return url, TokenIssuer.load_or_create(tmp_path / "state" / KEY_FILE)


def start_worker(url: str, procs: list[Proc], room: str = "lab", key: str = WORKER_KEY) -> Proc:
    worker = Proc(WORKER, url, room, key, f"gpu-{room}")
    procs.append(worker)
    assert worker.line() == "ready"
    return worker


def test_happy_path_rooms_and_tokens(tmp_path: Path) -> None:
    with processes() as procs:
        url, issuer = start_server(tmp_path, procs)

        async def before_worker() -> None:
            connect = make_connector(url, room_id="lab", token=issuer.issue("a", "lab"))
            with pytest.raises(SignalingError) as info:
                await connect()  # worker not running: a clear error, nothing hangs
            assert info.value.code == "no_worker"

        run(before_worker())
        start_worker(url, procs, "lab", WORKER_KEY)
        start_worker(url, procs, "other", OTHER_KEY)

        async def main() -> None:
            lab = make_connector(url, room_id="lab", token=issuer.issue("a", "lab"), loopback=True)
            link = await lab()
            assert link.peer_id == "gpu-lab"
            await link.send(b"hello")
            assert await asyncio.wait_for(link.recv(), 5) == b"olleh"
            await link.close()
            # A second client in another room sees only its room's worker...
            async with await SignalingClient.connect(url) as sig:
                await sig.register(room_id="other", role="client", token=issuer.issue("b", "other"))
                assert [p.peer_id for p in await sig.discover()] == ["gpu-other"]
            # ...and cannot reach the lab's worker even by name.
            cross = make_connector(
                url,
                room_id="other",
                token=issuer.issue("b", "other"),
                worker_id="gpu-lab",
                loopback=True,
            )
            with pytest.raises(SignalingError) as info:
                await cross()
            assert info.value.code == "unknown_peer"
            # Wrong room, expired and forged tokens: refused as auth problems.
            bad_tokens = {
                "wrong room": issuer.issue("a", "other"),
                "expired": issuer.issue("a", "lab", ttl_s=1, now=time.time() - 7200),
                "forged": TokenIssuer.generate().issue("a", "lab"),
            }
            for what, token in bad_tokens.items():
                with pytest.raises(SignalingError) as info:
                    await make_connector(url, room_id="lab", token=token, loopback=True)()
                assert info.value.is_auth, what

        run(main(), timeout=60)


def test_links_survive_the_signaling_server_and_a_killed_worker_is_noticed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What notices the killed worker is aioice's consent freshness on this (the client's)
    # end: a check every CONSENT_INTERVAL s (5, jittered 0.8-1.2x), each waiting 0.5 s for
    # its answer, the link closed after CONSENT_FAILURES (6) unanswered ones in a row: ~33 s.
    # The same checks a second apart end it in ~9 s. The worker keeps aioice's defaults.
    monkeypatch.setattr(aioice.ice, "CONSENT_INTERVAL", 1)
    with processes() as procs:
        url, issuer = start_server(tmp_path, procs)
        worker = start_worker(url, procs)

        async def main() -> None:
            connect = make_connector(
                url, room_id="lab", token=issuer.issue("a", "lab"), loopback=True
            )
            link = await connect()
            procs[0].stop(signal.SIGKILL)  # the signaling server dies
            assert await asyncio.to_thread(worker.line) == "signaling ended"
            await link.send(b"still here")  # the datachannel does not need it
            assert await asyncio.wait_for(link.recv(), 5) == b"ereh llits"
            # The worker process is killed: no close handshake. ICE consent
            # freshness (RFC 7675; ~30 s with aioice's defaults, see above) ends the
            # link: LinkClosed, not a hang.
            worker.stop(signal.SIGKILL)
            t0 = time.monotonic()
            with pytest.raises(LinkClosed):
                await asyncio.wait_for(link.recv(), 60)
            assert time.monotonic() - t0 < 60
            with pytest.raises(LinkClosed):
                await link.send(b"x")

        run(main(), timeout=90)
