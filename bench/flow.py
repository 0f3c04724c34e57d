"""Client flow benchmarks.

1. Presubmission latency against the real WorkerService over an in-memory link:
   connect, Hello, path check (real SLP file), JobSubmit, JobAccepted. Median
   over repeats, plus a per-step breakdown on one connection.
2. Progress throughput: JobProgress frames from the worker side through the
   client session and connection into the LossViewer bridge (ZMQ), counted on a
   bound SUB polled like LossViewer polls it. Bar: 2,000 JobProgress/s with
   nothing dropped.

Run: ``python -m bench.flow`` (or ``python -m bench flow``).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import zmq
from google.protobuf.message import Message

from sleap_rtc.client.connection import WorkerConnection
from sleap_rtc.client.events import ProgressReceived
from sleap_rtc.client.flow import PresubmissionFlow
from sleap_rtc.client.lossviewer import LossViewerBridge
from sleap_rtc.client.session import ClientSession
from sleap_rtc.client.timeouts import FlowTimeouts
from sleap_rtc.transport.link import memory_link_pair
from sleap_rtc.worker.batching import coalesce
from sleap_rtc.worker.service import WorkerService
from sleap_rtc.worker.serviceconfig import WorkerConfig
from sleap_rtc_proto.stream import MessageStream
from sleap_rtc_proto.v1 import progress_pb2

REPEATS = 50
PROGRESS_MESSAGES = 20_000
PROGRESS_BAR_PER_S = 2_000.0
LATENCY_BAR_S = 0.5

CONFIG = {"model_config": {"backbone_config": {}}, "trainer_config": {"max_epochs": 1}}


def _slp_factory() -> Any:
    tests = Path(__file__).resolve().parent.parent / "tests"
    if str(tests) not in sys.path:
        sys.path.insert(0, str(tests))
    import slp_factory

    return slp_factory


async def _latency(root: Path) -> dict[str, float]:
    factory = _slp_factory()
    mnt = root / "mnt"
    videos = [factory.make_h5_video(mnt / "data" / f"v{i}.h5") for i in range(3)]
    labels = str(factory.make_labels(mnt / "data" / "labels.slp", videos))
    trainer = shutil.which("true") or "/bin/true"
    service = WorkerService(WorkerConfig(
        mounts=[mnt], state_dir=root / "state", verifier=None, trainer_command=(trainer,),
        max_concurrent_jobs=REPEATS * 2 + 10, worker_id="bench",
    ))
    await service.start()
    tasks: list[asyncio.Task[None]] = []

    async def connect() -> Any:
        client_end, worker_end = memory_link_pair()
        tasks.append(asyncio.create_task(service.serve(worker_end, peer_id="bench")))
        return client_end

    try:
        flow = PresubmissionFlow(connect=connect, follow_progress=False,
                                 timeouts=FlowTimeouts(check_s=30, submit_s=30))
        await flow.run(config=CONFIG, labels_path=labels)  # warm-up
        totals = []
        for _ in range(REPEATS):
            start = time.perf_counter()
            result = await flow.run(config=CONFIG, labels_path=labels)
            totals.append(time.perf_counter() - start)
            assert result.ok, result
        steps: dict[str, list[float]] = {"hello": [], "check": [], "submit": []}
        from sleap_rtc.jobs.spec import TrainJobSpec

        for _ in range(REPEATS):
            conn = WorkerConnection(await connect(), ClientSession())
            t0 = time.perf_counter()
            await conn.hello()
            t1 = time.perf_counter()
            result_msg = await conn.check_paths(labels)
            t2 = time.perf_counter()
            spec = TrainJobSpec(config_content=json.dumps(CONFIG), labels_path=labels)
            await conn.submit(f"bench-{time.monotonic_ns()}", spec.to_proto(),
                              check_token=result_msg.check_token)
            t3 = time.perf_counter()
            await conn.close()
            steps["hello"].append(t1 - t0)
            steps["check"].append(t2 - t1)
            steps["submit"].append(t3 - t2)
        out = {"flow_median_s": statistics.median(totals),
               "flow_p90_s": sorted(totals)[int(len(totals) * 0.9) - 1]}
        out.update({f"{k}_median_s": statistics.median(v) for k, v in steps.items()})
        return out
    finally:
        await service.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class _Viewer:
    """A SUB bound like LossViewer's, polled on its own thread; counts messages."""

    def __init__(self, ctx: zmq.Context[Any]) -> None:
        self.sub = ctx.socket(zmq.SUB)
        self.sub.setsockopt(zmq.SUBSCRIBE, b"")
        self.sub.setsockopt(zmq.RCVHWM, 0)
        self.port = self.sub.bind_to_random_port("tcp://127.0.0.1")
        self.count = 0
        self.first_event = ""
        self.last_at = 0.0
        self.running = True
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while self.running:
            if self.sub.poll(20, zmq.POLLIN):
                while self.sub.poll(0, zmq.POLLIN):
                    raw = self.sub.recv_string()
                    if self.count == 0:
                        self.first_event = json.loads(raw)["event"]
                    self.count += 1
                    self.last_at = time.perf_counter()
        self.sub.close(linger=0)


async def _throughput() -> dict[str, float]:
    client_end, worker_end = memory_link_pair()
    return await progress_throughput(client_end, worker_end)


async def progress_throughput(
    client_end: Any, worker_end: Any, *, batch: bool = False
) -> dict[str, float]:
    """JobProgress frames sent on ``worker_end`` -> client session -> bridge -> bound SUB.

    Any pair of joined Links works: bench.progress_webrtc passes a datachannel pair.
    With ``batch``, the worker end sends what the real worker sends to a client that
    announced "progress_batch" when all the messages wait at once: the queue goes
    through :func:`sleap_rtc.worker.batching.coalesce` (JobProgressBatch) first.
    """
    ctx: zmq.Context[Any] = zmq.Context()
    viewer = _Viewer(ctx)
    bridge = LossViewerBridge(publish_port=viewer.port, controller_port=None, context=ctx)
    bridge.open()
    worker = MessageStream()
    conn = WorkerConnection(client_end, ClientSession())
    # Handshake without a real worker: answer Hello directly.
    from sleap_rtc_proto.v1 import handshake_pb2
    from sleap_rtc_proto.versions import SUPPORTED

    hello_task = asyncio.create_task(conn.hello())
    hello = worker.receive(await worker_end.recv(), 0.0)
    assert hello is not None
    assert ("progress_batch" in hello.hello.features) or not batch
    features = ["progress_batch"] if batch else []
    for frame in worker.send(handshake_pb2.HelloAck(chosen_version=SUPPORTED.max.to_proto(),
                                                    worker_id="bench", features=features),
                             correlation_id=hello.message_id)[1]:
        await worker_end.send(frame)
    await hello_task
    # Prime: train_begin, which also waits for the viewer's subscription (not timed).
    first = progress_pb2.JobProgress(job_id="j", sequence=1,
                                     event=progress_pb2.PROGRESS_EVENT_TRAIN_BEGIN)
    bridge.publish(first)
    queued: list[Message] = [
        progress_pb2.JobProgress(
            job_id="j", sequence=i + 2, event=progress_pb2.PROGRESS_EVENT_BATCH_END,
            epoch=i // 100, batch=i % 100, metrics={"loss": 1.0 / (i + 1)},
        )
        for i in range(PROGRESS_MESSAGES)
    ]
    frames = []
    for msg in coalesce(queued) if batch else queued:
        frames.extend(worker.send(msg)[1])
    start = time.perf_counter()

    async def produce() -> None:
        for frame in frames:
            await worker_end.send(frame)

    producer = asyncio.create_task(produce())
    handled = 0
    while handled < PROGRESS_MESSAGES:
        event = await conn.next_event(timeout_s=10)
        if isinstance(event, ProgressReceived):
            bridge.handle(event)
            handled += 1
    await producer
    published = time.perf_counter()
    deadline = time.monotonic() + 30
    while viewer.count < PROGRESS_MESSAGES + 1 and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    end = viewer.last_at or time.perf_counter()
    viewer.running = False
    viewer.thread.join(5)
    bridge.close()
    await conn.close()
    ctx.term()
    return {
        "sent": float(PROGRESS_MESSAGES + 1),
        "received": float(viewer.count),
        "client_rate_per_s": PROGRESS_MESSAGES / (published - start),
        "end_to_end_rate_per_s": PROGRESS_MESSAGES / (end - start),
        "first_is_train_begin": float(viewer.first_event == "train_begin"),
        "frames": float(len(frames)),
    }


def main() -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        latency = asyncio.run(_latency(Path(tmp)))
    print(f"[flow] presubmission over an in-memory link, real WorkerService, {REPEATS} repeats")
    print(f"  connect+hello+check+submit+accepted: median {latency['flow_median_s'] * 1e3:.2f} ms, "
          f"p90 {latency['flow_p90_s'] * 1e3:.2f} ms (bar {LATENCY_BAR_S * 1e3:.0f} ms over "
          f"WebRTC: {'ok' if latency['flow_median_s'] < LATENCY_BAR_S else 'MISSED'})")
    print(f"  steps (median): hello {latency['hello_median_s'] * 1e3:.2f} ms, "
          f"check {latency['check_median_s'] * 1e3:.2f} ms, "
          f"submit {latency['submit_median_s'] * 1e3:.2f} ms")
    progress = asyncio.run(_throughput())
    dropped = int(progress["sent"] - progress["received"])
    ok = progress["end_to_end_rate_per_s"] >= PROGRESS_BAR_PER_S and dropped == 0
    print(f"[flow] JobProgress -> session -> LossViewer bridge -> ZMQ SUB, "
          f"{PROGRESS_MESSAGES:,} messages")
    print(f"  client side {progress['client_rate_per_s']:,.0f}/s, end to end "
          f"{progress['end_to_end_rate_per_s']:,.0f}/s, received "
          f"{int(progress['received']):,}/{int(progress['sent']):,} (dropped {dropped}), "
          f"first={'train_begin' if progress['first_is_train_begin'] else 'OTHER'} "
          f"(bar {PROGRESS_BAR_PER_S:,.0f}/s, none dropped: {'ok' if ok else 'MISSED'})")
    return {"latency": latency, "progress": progress}


if __name__ == "__main__":
    main()
