"""WebRTC over loopback: connect (signaling included) + one round trip, and 1 KB frames/s.

Run: ``python -m bench.webrtc`` (or ``python -m bench webrtc``). Everything runs on
127.0.0.1 with loopback ICE candidates and no ICE servers.
"""

from __future__ import annotations

import asyncio
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

from sleap_rtc.signaling.client import SignalingClient
from sleap_rtc.signaling.rooms import RoomConfig
from sleap_rtc.signaling.server import serve_signaling
from sleap_rtc.transport.answerer import serve_links
from sleap_rtc.transport.channel import DataChannelLink
from sleap_rtc.transport.link import LinkClosed
from sleap_rtc.transport.webrtc import make_connector

REPEATS = 20
FRAMES = 5000
FRAME_BYTES = 1024
WORKER_KEY = "bench-worker-key"


async def _echo_or_count(link: DataChannelLink) -> None:
    """b'?'-prefixed frames are echoed; others are counted and acknowledged at the end."""
    count = 0
    while True:
        try:
            frame = await link.recv()
        except LinkClosed:
            return
        if frame.startswith(b"?"):
            await link.send(frame)
        elif frame == b"done":
            await link.send(str(count).encode())
        else:
            count += 1


async def run() -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        server = await serve_signaling(
            state_dir=Path(tmp), rooms={"bench": RoomConfig(WORKER_KEY, "pw")}
        )
        worker = await SignalingClient.connect(server.url)
        await worker.register(room_id="bench", role="worker", worker_key=WORKER_KEY, peer_id="w")
        serving = asyncio.ensure_future(serve_links(worker, _echo_or_count, loopback=True))
        connect = make_connector(
            server.url,
            room_id="bench",
            token=server.issuer.issue("bench", "bench"),
            worker_id="w",
            loopback=True,
        )
        try:
            connects, rtts = [], []
            for _ in range(REPEATS):
                t0 = time.perf_counter()
                link = await connect()
                t1 = time.perf_counter()
                await link.send(b"?ping")
                assert await asyncio.wait_for(link.recv(), 10) == b"?ping"
                t2 = time.perf_counter()
                connects.append(t2 - t0)
                rtts.append(t2 - t1)
                await link.close()

            link = await connect()
            payload = b"x" * FRAME_BYTES
            t0 = time.perf_counter()
            for _ in range(FRAMES):
                await link.send(payload)
            await link.send(b"done")
            got = int(await asyncio.wait_for(link.recv(), 60))
            elapsed = time.perf_counter() - t0
            await link.close()
            assert got == FRAMES, f"{got} of {FRAMES} frames arrived"
            rtt_many = []
            link = await connect()
            for _ in range(200):
                t = time.perf_counter()
                await link.send(b"?" + payload)
                await link.recv()
                rtt_many.append(time.perf_counter() - t)
            await link.close()
        finally:
            await worker.close()
            await asyncio.wait_for(serving, 10)
            await server.close()
    two_process = await _two_process_rate()
    return {
        "frames_1kb_per_s_two_processes": two_process,
        "connect_and_roundtrip_median_s": statistics.median(connects),
        "connect_and_roundtrip_p90_s": sorted(connects)[int(0.9 * len(connects)) - 1],
        "first_roundtrip_median_s": statistics.median(rtts),
        "roundtrip_1kb_median_ms": statistics.median(rtt_many) * 1000,
        "frames_1kb_per_s": FRAMES / elapsed,
    }


_WORKER = r"""
import asyncio, sys
from bench.webrtc import _echo_or_count
from sleap_rtc.signaling.client import SignalingClient
from sleap_rtc.transport.answerer import serve_links
async def main():
    sig = await SignalingClient.connect(sys.argv[1])
    await sig.register(room_id="bench", role="worker", worker_key=sys.argv[2], peer_id="w2")
    print("ready", flush=True)
    await serve_links(sig, _echo_or_count, loopback=True)
asyncio.run(main())
"""


async def _two_process_rate() -> float:
    """1 KB frames/s with the worker in its own process (as in production)."""
    with tempfile.TemporaryDirectory() as tmp:
        server = await serve_signaling(
            state_dir=Path(tmp), rooms={"bench": RoomConfig(WORKER_KEY, "pw")}
        )
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", _WORKER, server.url, WORKER_KEY, stdout=asyncio.subprocess.PIPE
        )
        try:
            assert proc.stdout is not None
            assert (await asyncio.wait_for(proc.stdout.readline(), 30)).strip() == b"ready"
            connect = make_connector(
                server.url,
                room_id="bench",
                token=server.issuer.issue("bench", "bench"),
                worker_id="w2",
                loopback=True,
            )
            link = await connect()
            payload = b"x" * FRAME_BYTES
            t0 = time.perf_counter()
            for _ in range(FRAMES):
                await link.send(payload)
            await link.send(b"done")
            got = int(await asyncio.wait_for(link.recv(), 60))
            elapsed = time.perf_counter() - t0
            assert got == FRAMES, f"{got} of {FRAMES} frames arrived"
            await link.close()
        finally:
            proc.kill()
            await proc.wait()
            await server.close()
    return FRAMES / elapsed


def main() -> dict[str, float]:
    logging.basicConfig(level=logging.ERROR)
    results = asyncio.run(run())
    print(
        f"connect (signaling + ICE + DTLS + SCTP) + first round trip, median of {REPEATS}: "
        f"{results['connect_and_roundtrip_median_s'] * 1000:.1f} ms "
        f"(p90 {results['connect_and_roundtrip_p90_s'] * 1000:.1f} ms; "
        f"first round trip {results['first_roundtrip_median_s'] * 1000:.2f} ms)"
    )
    print(
        "round trip of a 1 KB frame on an open link, median: "
        f"{results['roundtrip_1kb_median_ms']:.2f} ms"
    )
    print(
        f"1 KB frames one way: {results['frames_1kb_per_s']:,.0f} frames/s "
        f"({FRAMES} frames, all arrived)"
    )
    print(
        f"1 KB frames one way, worker in its own process: "
        f"{results['frames_1kb_per_s_two_processes']:,.0f} frames/s"
    )
    return results


if __name__ == "__main__":
    main()
