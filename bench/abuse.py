"""Latency of normal users while a hostile room member abuses the signaling server and worker.

Run: ``python -m bench.abuse``. Everything is real and on loopback: a
``SignalingServer``, a registered worker (``WorkerService`` behind an
``Answerer``, WebRTC datachannels with loopback candidates, a real SLP file),
normal clients. Two latencies are measured, each ``REPEATS`` times, first
without abuse and then during each abuse:

- **register+discover**: a normal client opens a websocket, registers with its
  token and lists the room's workers;
- **hello+check**: a registered client offers a WebRTC connection to the
  worker, says Hello and runs a path check of the labels file.

The abuses (each bounded: it stops when its measurement ends):

- ``idle_sockets``: 1,050 websockets that never register (from other loopback
  addresses, 127.0.x.y), kept open;
- ``login_bruteforce``: wrong passphrases for the room as fast as the server
  answers, from another address;
- ``deep_json``: 60 KB messages nested 30,000 deep, as fast as answered;
- ``stuck_offers``: another room member relays 16 offers whose ICE never
  completes, renewed every second.

It prints the median (and max) of each, and the ratio to the baseline median.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from websockets.asyncio.client import connect

from sleap_rtc.client.connection import WorkerConnection
from sleap_rtc.client.session import ClientSession
from sleap_rtc.demo import make_dataset
from sleap_rtc.signaling.client import SignalingClient
from sleap_rtc.signaling.rooms import RoomConfig
from sleap_rtc.signaling.server import SignalingServer, serve_signaling
from sleap_rtc.transport.answerer import serve_links
from sleap_rtc.transport.loopback import loopback_candidates
from sleap_rtc.transport.webrtc import offer_link
from sleap_rtc.worker.service import WorkerService
from sleap_rtc.worker.serviceconfig import WorkerConfig

REPEATS = 10
WORKER_KEY = "bench-worker-key-0123"
SECRET = "bench passphrase"
ROOMS = {"lab": RoomConfig(worker_key=WORKER_KEY, login_secret=SECRET)}


async def register_discover(server: SignalingServer, token: str) -> float:
    started = time.perf_counter()
    async with connect(server.url, open_timeout=10) as ws:
        await ws.send(
            json.dumps({"type": "register", "room_id": "lab", "role": "client", "jwt": token})
        )
        reply = json.loads(await asyncio.wait_for(ws.recv(), 10))
        assert reply["type"] == "registered_auth", reply
        await ws.send(json.dumps({"type": "discover_peers"}))
        listing = json.loads(await asyncio.wait_for(ws.recv(), 10))
        assert listing["type"] == "peer_list" and listing["count"] == 1, listing
    return time.perf_counter() - started


async def hello_check(client: SignalingClient, labels: str) -> float:
    started = time.perf_counter()
    link = await offer_link(client, "w1", loopback=True, timeout=20)
    conn = WorkerConnection(link, ClientSession(client_name="bench"))
    try:
        await conn.hello(timeout_s=10)
        result = await conn.check_paths(labels, timeout_s=20)
        assert result.labels.status, result
    finally:
        await conn.close()
    return time.perf_counter() - started


async def _idle_sockets(server: SignalingServer, stop: asyncio.Event) -> None:
    held: list[Any] = []
    try:
        for n in range(1050):
            if stop.is_set():
                break
            with contextlib.suppress(Exception):
                held.append(
                    await connect(
                        server.url,
                        open_timeout=5,
                        local_addr=(f"127.0.{1 + n % 200}.{2 + n // 200}", 0),
                    )
                )
        await stop.wait()
    finally:
        await asyncio.gather(*(ws.close() for ws in held), return_exceptions=True)


async def _login_bruteforce(server: SignalingServer, stop: asyncio.Event) -> None:
    async with connect(server.url, local_addr=("127.0.0.9", 0)) as ws:
        n = 0
        while not stop.is_set():
            n += 1
            await ws.send(
                json.dumps({"type": "login", "room_id": "lab", "user": "x", "secret": f"guess-{n}"})
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(ws.recv(), 5)


async def _deep_json(server: SignalingServer, stop: asyncio.Event) -> None:
    raw = "[" * 30_000 + "]" * 30_000
    async with connect(server.url, local_addr=("127.0.0.10", 0), max_size=None) as ws:
        while not stop.is_set():
            await ws.send(raw)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(ws.recv(), 5)


async def _stuck_offers(server: SignalingServer, stop: asyncio.Event) -> None:
    from aiortc import RTCPeerConnection

    sig = await SignalingClient.connect(server.url, timeout=5)
    await sig.register(room_id="lab", role="client", token=server.issuer.issue("mallory", "lab"))
    pcs: list[Any] = []
    try:
        n = 0
        while not stop.is_set():
            for _ in range(16):
                n += 1
                pc = RTCPeerConnection()
                pc.createDataChannel("sleap-rtc")
                with loopback_candidates(True):
                    await pc.setLocalDescription(await pc.createOffer())
                await sig.relay("offer", "w1", sdp=pc.localDescription.sdp, session=f"s{n}")
                pcs.append(pc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)
    finally:
        for pc in pcs:
            await pc.close()
        await sig.close()


ABUSES: dict[str, Callable[[SignalingServer, asyncio.Event], Awaitable[None]]] = {
    "idle_sockets": _idle_sockets,
    "login_bruteforce": _login_bruteforce,
    "deep_json": _deep_json,
    "stuck_offers": _stuck_offers,
}


async def _measure(
    server: SignalingServer, client: SignalingClient, token: str, labels: str
) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"register+discover": [], "hello+check": []}
    for _ in range(REPEATS):
        out["register+discover"].append(await register_discover(server, token))
        out["hello+check"].append(await hello_check(client, labels))
    return out


async def main() -> int:
    logging.basicConfig(level=logging.ERROR)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = make_dataset(root)
        server = await serve_signaling("127.0.0.1", 0, state_dir=root / "sig", rooms=ROOMS)
        service = WorkerService(
            WorkerConfig(
                mounts=[data.share], state_dir=root / "state", verifier=None, build_index=False
            )
        )
        await service.start()
        worker = await SignalingClient.connect(server.url, timeout=5)
        await worker.register(room_id="lab", role="worker", worker_key=WORKER_KEY, peer_id="w1")
        serving = asyncio.create_task(serve_links(worker, service.serve, loopback=True))
        client = await SignalingClient.connect(server.url, timeout=5)
        await client.register(room_id="lab", role="client", token=server.issuer.issue("a", "lab"))
        token = server.issuer.issue("ann", "lab")
        labels = str(data.labels_path)
        try:
            rows: list[tuple[str, str, float, float, float]] = []
            await _measure(server, client, token, labels)  # warm up (first connections)
            base = await _measure(server, client, token, labels)
            for name, abuse in ABUSES.items():
                stop = asyncio.Event()
                task = asyncio.create_task(abuse(server, stop))
                await asyncio.sleep(3.0)  # let the abuse get going
                try:
                    during = await asyncio.wait_for(_measure(server, client, token, labels), 300)
                finally:
                    stop.set()
                    await asyncio.wait_for(asyncio.gather(task, return_exceptions=True), 60)
                for metric, values in during.items():
                    b = statistics.median(base[metric])
                    m = statistics.median(values)
                    rows.append((name, metric, b, m, max(values)))
            print(
                f"{'abuse':<18} {'metric':<18} {'base ms':>9} {'during ms':>10} "
                f"{'max ms':>8} {'ratio':>6}"
            )
            for name, metric, b, m, worst in rows:
                print(
                    f"{name:<18} {metric:<18} {b * 1e3:9.1f} {m * 1e3:10.1f} "
                    f"{worst * 1e3:8.1f} {m / b:6.2f}"
                )
        finally:
            serving.cancel()
            await asyncio.gather(serving, return_exceptions=True)
            await client.close()
            await worker.close()
            await service.close()
            await server.close()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
