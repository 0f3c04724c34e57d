"""The presubmission flow over loopback WebRTC, one connection per run (bar: < 0.5 s median).

Each run: signaling (register, pick the worker), WebRTC connect (loopback ICE,
DTLS, SCTP, channel open), Hello/HelloAck (the worker verifies the JWT itself),
PathCheck of a real SLP whose video sits on the worker's mount, JobSubmit,
JobAccepted. The real signaling server, WorkerService and PresubmissionFlow;
the trainer is a no-op command so jobs end at once.

Run: ``python -m bench.presubmit_webrtc`` (or ``python -m bench presubmit_webrtc``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import h5py
import numpy as np

from sleap_rtc.auth.tokens import TokenVerifier
from sleap_rtc.client.auth import AuthCheck
from sleap_rtc.client.flow import PresubmissionFlow
from sleap_rtc.client.results import FlowStatus
from sleap_rtc.signaling.client import SignalingClient
from sleap_rtc.signaling.protocol import worker_metadata
from sleap_rtc.signaling.rooms import RoomConfig
from sleap_rtc.signaling.server import serve_signaling
from sleap_rtc.transport.answerer import serve_links
from sleap_rtc.transport.channel import DataChannelLink
from sleap_rtc.transport.webrtc import make_connector
from sleap_rtc.worker.service import WorkerService
from sleap_rtc.worker.serviceconfig import WorkerConfig

REPEATS = 20
WARMUP = 2
BAR_S = 0.5
ROOM = "bench"
WORKER_KEY = "bench-worker-key"
CONFIG = "trainer_config:\n  max_epochs: 1\nmodel_config:\n  backbone_config: {}\n"


def _write_labels(mount: Path) -> Path:
    import sleap_io as sio

    video = mount / "data" / "v.h5"
    video.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(video, "w") as f:
        f.create_dataset("video", data=np.zeros((2, 8, 8, 1), dtype=np.uint8))
    skeleton = sio.Skeleton(["head", "tail"])
    vid = sio.Video(filename=str(video), backend=None)
    frame = sio.LabeledFrame(
        video=vid,
        frame_idx=0,
        instances=[sio.Instance.from_numpy(np.array([[1.0, 2.0], [3.0, 4.0]]), skeleton)],
    )
    labels_path = mount / "data" / "labels.slp"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sio.Labels(labeled_frames=[frame], videos=[vid], skeletons=[skeleton]).save(
            str(labels_path)
        )
    return labels_path


async def run() -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        mount = root / "mnt"
        labels = _write_labels(mount)
        server = await serve_signaling(
            state_dir=root / "signal", rooms={ROOM: RoomConfig(WORKER_KEY, "pw")}
        )
        verifier = TokenVerifier.from_jwks(server.jwks())
        service = WorkerService(
            WorkerConfig(
                mounts=[mount],
                state_dir=root / "worker",
                verifier=functools.partial(verifier.verify, room=ROOM),
                trainer_command=(sys.executable, "-c", "pass"),
                max_concurrent_jobs=1000,
                worker_id="w",
            )
        )
        await service.start()
        sig = await SignalingClient.connect(server.url)
        await sig.register(
            room_id=ROOM,
            role="worker",
            worker_key=WORKER_KEY,
            peer_id="w",
            metadata=worker_metadata(name="bench"),
        )

        async def handle(link: DataChannelLink) -> None:
            await service.serve(link, peer_id=link.peer_id)

        serving = asyncio.ensure_future(serve_links(sig, handle, loopback=True))
        token = server.issuer.issue("bench", ROOM)
        flow = PresubmissionFlow(
            connect=make_connector(server.url, room_id=ROOM, token=token, loopback=True),
            auth=AuthCheck(get_token=lambda: token, login=lambda: None, room=ROOM),
            follow_progress=False,
        )
        times: list[float] = []
        try:
            for i in range(WARMUP + REPEATS):
                t0 = time.perf_counter()
                result = await flow.run(labels_path=str(labels), config_content=CONFIG)
                elapsed = time.perf_counter() - t0
                if result.status is not FlowStatus.SUCCESS:
                    raise RuntimeError(f"run {i} did not succeed: {result.message}")
                if i >= WARMUP:
                    times.append(elapsed)
        finally:
            await sig.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(serving, 10)
            await service.close()
            await server.close()
    return {
        "presubmit_median_s": statistics.median(times),
        "presubmit_min_s": min(times),
        "presubmit_max_s": max(times),
    }


def main() -> dict[str, float]:
    logging.basicConfig(level=logging.ERROR)
    results = asyncio.run(run())
    median = results["presubmit_median_s"]
    verdict = "meets" if median < BAR_S else "MISSES"
    print(
        f"presubmission over loopback WebRTC (signaling, connect, hello, path check, submit, "
        f"accepted), median of {REPEATS}: {median * 1000:.0f} ms "
        f"(min {results['presubmit_min_s'] * 1000:.0f}, "
        f"max {results['presubmit_max_s'] * 1000:.0f}); "
        f"{verdict} the {BAR_S:g} s bar"
    )
    return results


if __name__ == "__main__":
    main()
