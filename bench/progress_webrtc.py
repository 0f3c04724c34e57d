"""JobProgress through a loopback WebRTC datachannel and into a LossViewer-style ZMQ SUB.

Run: ``python -m bench.progress_webrtc``. The worker end queues 20,000 JobProgress
and sends what the real worker sends to a client that announced "progress_batch"
(protocol 1.1): the queue through ``sleap_rtc.worker.batching.coalesce`` and a
MessageStream, so JobProgressBatch frames of up to 256 items, on a real aiortc
datachannel (signaling included, loopback ICE). The client end decodes them with
its session (one ProgressReceived per item) and republishes each through the
LossViewer bridge to a bound SUB that counts them. Bar (DESIGN.md): 2,000
JobProgress/s through datachannel and ZMQ with nothing dropped. The in-memory
figure from bench.flow (one frame per JobProgress), measured in the same process,
is the baseline.
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
from pathlib import Path
from typing import Any

from bench.flow import PROGRESS_BAR_PER_S, _throughput, progress_throughput
from sleap_rtc.signaling.client import SignalingClient
from sleap_rtc.signaling.rooms import RoomConfig
from sleap_rtc.signaling.server import serve_signaling
from sleap_rtc.transport.answerer import serve_links
from sleap_rtc.transport.link import Link
from sleap_rtc.transport.webrtc import make_connector

WORKER_KEY = "bench-worker-key"


async def _over_webrtc() -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        server = await serve_signaling(
            state_dir=Path(tmp), rooms={"bench": RoomConfig(WORKER_KEY, "pw")}
        )
        worker_sig = await SignalingClient.connect(server.url)
        await worker_sig.register(
            room_id="bench", role="worker", worker_key=WORKER_KEY, peer_id="w"
        )
        accepted: asyncio.Future[Link] = asyncio.get_running_loop().create_future()
        finished = asyncio.Event()

        async def hold(link: Link) -> None:
            accepted.set_result(link)
            await finished.wait()

        serving = asyncio.ensure_future(serve_links(worker_sig, hold, loopback=True))
        connect = make_connector(
            server.url,
            room_id="bench",
            token=server.issuer.issue("bench", "bench"),
            worker_id="w",
            loopback=True,
        )
        try:
            client_end = await connect()
            async with asyncio.timeout(30):
                worker_end = await accepted
            return await progress_throughput(client_end, worker_end, batch=True)
        finally:
            finished.set()
            await worker_sig.close()
            async with asyncio.timeout(10):
                await serving
            await server.close()


def main() -> dict[str, Any]:
    logging.basicConfig(level=logging.ERROR)
    baseline = asyncio.run(_throughput())
    rtc = asyncio.run(_over_webrtc())
    dropped = int(rtc["sent"] - rtc["received"])
    ok = rtc["end_to_end_rate_per_s"] >= PROGRESS_BAR_PER_S and dropped == 0
    print(
        f"[progress] JobProgress over loopback WebRTC -> session -> LossViewer bridge -> ZMQ SUB: "
        f"{rtc['end_to_end_rate_per_s']:,.0f}/s end to end, received "
        f"{int(rtc['received']):,}/{int(rtc['sent']):,} (dropped {dropped}) in "
        f"{int(rtc['frames']):,} datachannel frames (JobProgressBatch), "
        f"first={'train_begin' if rtc['first_is_train_begin'] else 'OTHER'} "
        f"(bar {PROGRESS_BAR_PER_S:,}/s, none dropped: {'ok' if ok else 'FAIL'})"
    )
    print(
        f"[progress] same path over an in-memory link (baseline, same process): "
        f"{baseline['end_to_end_rate_per_s']:,.0f}/s in {int(baseline['frames']):,} frames; "
        f"WebRTC runs at "
        f"{rtc['end_to_end_rate_per_s'] / baseline['end_to_end_rate_per_s']:.2f}x of it"
    )
    return {"webrtc": rtc, "baseline": baseline}


if __name__ == "__main__":
    main()
