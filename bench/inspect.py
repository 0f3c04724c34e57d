"""Inspector and recorder benchmarks (issue 6).

1. Builds a 1,000,000-message capture in a temp dir (realistic mix: a
   handshake, path checks and submits, then mostly JobProgress with some
   JobLog, a few Errors, fragmented path check results and legacy frames).
2. Times ``inspect cat --json`` over it (bar: at least 100,000 messages/s).
3. Times what the generated encoders buy (the same with them switched off).
4. Times the recorder's overhead per message: ``RecordingLink.send`` against
   the bare in-memory link (the caller's cost; writing happens on a thread).

Run: ``python -m bench.inspect`` (``--messages N`` for a smaller run).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import TextIO, cast

BAR_MSG_PER_S = 100_000


def build_capture(path: Path, n: int) -> float:
    """Write an ``n``-message capture to ``path``; returns seconds taken."""
    from sleap_rtc.capture.write.recorder import CaptureWriter
    from sleap_rtc.transport.link import memory_link_pair  # noqa: F401 - same import cost as real use
    from sleap_rtc_proto.stream import MessageStream
    from sleap_rtc_proto.v1 import (
        error_pb2,
        handshake_pb2,
        job_pb2,
        paths_pb2,
        progress_pb2,
        spec_pb2,
    )
    from sleap_rtc_proto.versions import CURRENT

    start = time.perf_counter()
    client, worker = MessageStream(), MessageStream(max_frame_bytes=16_384)
    writer = CaptureWriter(path, max_bytes=1 << 40, background=False)
    conn = writer.connection(
        "bench", local_peer="client-1", remote_peer="worker-1", local_role="client"
    )
    t = time.time_ns()
    c2w, w2c = "client_to_worker", "worker_to_client"
    count = 0

    def put(direction: str, frames: list[bytes]) -> None:
        nonlocal t, count
        for frame in frames:
            t += 50_000
            writer.record(conn, direction, frame, t)
            count += 1

    hello_id, frames = client.send(
        handshake_pb2.Hello(
            min_version=CURRENT.to_proto(),
            max_version=CURRENT.to_proto(),
            software="sleap-rtc 0.1.0",
            token="eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJ1In0.c2lnbmF0dXJl",
        )
    )
    put(c2w, frames)
    put(
        w2c,
        worker.send(
            handshake_pb2.HelloAck(
                chosen_version=CURRENT.to_proto(), worker_id="worker-1", software="sleap-rtc 0.1.0"
            ),
            correlation_id=hello_id,
        )[1],
    )
    videos = [
        paths_pb2.VideoCheck(
            index=i,
            original_path=f"/Users/me/data/video_{i:04d}.mp4",
            worker_path=f"/mnt/lab/data/video_{i:04d}.mp4",
            status=paths_pb2.PATH_STATUS_FOUND,
            kind=paths_pb2.VIDEO_KIND_FILE,
        )
        for i in range(400)
    ]
    jobs = 0
    sequence = 0
    # Template progress bodies, re-encoded with new numbers (encoding is not what is measured).
    progress = progress_pb2.JobProgress(job_id="job-0", event=progress_pb2.PROGRESS_EVENT_BATCH_END)
    while count < n:
        if count % 100_000 == 0 or count < 3:
            req_id, frames = client.send(
                paths_pb2.PathCheckRequest(labels_path="/mnt/lab/data/labels.slp")
            )
            put(c2w, frames)
            put(
                w2c,
                worker.send(
                    paths_pb2.PathCheckResult(
                        labels=paths_pb2.PathEntry(
                            original_path="/mnt/lab/data/labels.slp",
                            status=paths_pb2.PATH_STATUS_FOUND,
                        ),
                        videos=videos,
                        check_token="tok",
                    ),
                    correlation_id=req_id,
                )[1],
            )
            jobs += 1
            sequence = 0
            spec = spec_pb2.TrainJobSpec(
                config_content="model: unet\n" * 200, labels_path="/mnt/lab/labels.slp"
            )
            sub_id, frames = client.send(
                job_pb2.JobSubmit(job_id=f"job-{jobs}", spec=spec, check_token="tok")
            )
            put(c2w, frames)
            put(
                w2c,
                worker.send(
                    job_pb2.JobAccepted(job_id=f"job-{jobs}", run_dir="/runs/x"),
                    correlation_id=sub_id,
                )[1],
            )
            put(w2c, [b'JOB_PROGRESS::{"event": "train_begin", "what": ""}'])
        sequence += 1
        if count % 500 == 7:
            put(
                w2c,
                worker.send(
                    progress_pb2.JobLog(
                        job_id=f"job-{jobs}",
                        sequence=sequence,
                        stream=progress_pb2.LOG_STREAM_STDOUT,
                        lines=["Epoch 3: loss=0.0123 val_loss=0.0150"],
                    )
                )[1],
            )
        elif count % 20_000 == 11:
            put(
                w2c, worker.send(error_pb2.Error(code=error_pb2.ERROR_CODE_BUSY, message="busy"))[1]
            )
        else:
            progress.job_id = f"job-{jobs}"
            progress.sequence = sequence
            progress.epoch = sequence // 1000
            progress.batch = sequence % 1000
            progress.metrics["loss"] = 1.0 / sequence
            if sequence % 1000 == 0:
                progress.event = progress_pb2.PROGRESS_EVENT_EPOCH_END
                progress.metrics["val/loss"] = 1.5 / sequence
            else:
                progress.event = progress_pb2.PROGRESS_EVENT_BATCH_END
                progress.metrics.pop("val/loss", None)
            put(w2c, worker.send(progress)[1])
    writer.close()
    return time.perf_counter() - start


def time_cat_json(path: Path, jobs: int = 1, pair: bool = True) -> tuple[int, float, int, float]:
    """(messages, wall s, bytes of JSON, CPU s) of ``inspect cat --json`` over ``path``.

    ``pair=False`` leaves out linking requests and answers (to see what it costs).
    """
    from sleap_rtc.capture.read.headers import headers
    from sleap_rtc.capture.read.reader import CaptureReader
    from sleap_rtc.inspect.cat import write_json
    from sleap_rtc.inspect.pairing import NOT_REQUESTS, Linker, json_links

    class Sink(io.TextIOBase):
        size = 0

        def write(self, s: str) -> int:
            self.size += len(s)
            return len(s)

    sink = Sink()
    cpu = time.process_time()
    start = time.perf_counter()
    reader = CaptureReader([path])
    if not pair:
        batches = reader.json_batches(jobs)
    elif jobs == 1:  # as ``cat --json`` does in one process: reading ahead from each request
        batches = reader.json_batches(1, hook=Linker(reader))
    else:  # and with --jobs N: a first pass over the headers pairs requests and answers
        batches = reader.json_batches(
            jobs, json_links(headers(reader.paths, reader.kinds, skip=NOT_REQUESTS))
        )
    n = write_json(batches, cast(TextIO, sink), 0)
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu
    assert not reader.problems, reader.problems
    return n, elapsed, sink.size, cpu


def time_recorder(n: int, tmp: Path) -> tuple[float, float, float]:
    """ns/message of send on a bare link, on a RecordingLink, and of the writer thread's work."""
    from sleap_rtc.capture.write.recorder import CaptureWriter
    from sleap_rtc.transport.link import memory_link_pair
    from sleap_rtc_proto import codec
    from sleap_rtc_proto.v1 import progress_pb2

    frames = [
        codec.encode(
            progress_pb2.JobProgress(
                job_id="job-1",
                sequence=i + 1,
                event=progress_pb2.PROGRESS_EVENT_BATCH_END,
                epoch=1,
                batch=i,
                metrics={"loss": 0.5},
            ),
            message_id=i + 1,
        )
        for i in range(n)
    ]

    burst = 500

    async def send_bursts(link: object, writer: object | None) -> float:
        """ns/send, timed in bursts; between bursts the writer thread drains (not timed)."""
        send = link.send  # type: ignore[attr-defined]
        total = 0
        for i in range(0, n, burst):
            start = time.perf_counter_ns()
            for frame in frames[i : i + burst]:
                await send(frame)
            total += time.perf_counter_ns() - start
            if writer is not None:
                writer.flush()  # type: ignore[attr-defined]
        return total / n

    async def bare() -> float:
        a, _b = memory_link_pair()
        return await send_bursts(a, None)

    async def recorded() -> float:
        a, _b = memory_link_pair()
        writer = CaptureWriter(tmp / "overhead.mcap", queue_frames=n + 10)
        link = writer.wrap(
            a, connection_id="c", local_peer="client", remote_peer="worker", local_role="client"
        )
        per = await send_bursts(link, writer)
        writer.close()
        assert writer.written == n and writer.dropped == 0, (writer.written, writer.dropped)
        return per

    def drain() -> float:
        """CPU of the writer's work per frame (classify, redact, MCAP), measured synchronously."""
        writer = CaptureWriter(tmp / "drain.mcap", background=False)
        conn = writer.connection("c", local_peer="a", remote_peer="b", local_role="client")
        start = time.process_time_ns()
        for frame in frames:
            writer.record(conn, "client_to_worker", frame)
        writer.close()
        return (time.process_time_ns() - start) / n

    bare_ns = min(asyncio.run(bare()) for _ in range(3))
    rec_ns = min(asyncio.run(recorded()) for _ in range(2))
    return bare_ns, rec_ns, drain()


def time_without_generated(path: Path) -> list[tuple[str, float]]:
    """``cat --json`` msg/s (one process) as shipped, and with the generated encoders off.

    What the three ``exec``-generated encoders buy, measured: (a) as shipped;
    (b) without the wire-to-JSON fast path (``wirejson.compile_wire_json``):
    every message decoded with upb and written by ``convert.compile_json``;
    (c) without any generated code: ``json_format.MessageToDict`` and
    ``json.dumps`` per message (what ``compile_converter``/``compile_json``
    replace). (b) and (c) patch this process only.
    """
    import json

    from google.protobuf import json_format

    from sleap_rtc.capture.read.decode import LoadedSchema

    def dict_of(_self: object, _descriptor: object) -> object:
        return lambda m: json_format.MessageToDict(m, preserving_proto_field_name=True)

    def json_of(_self: object, _descriptor: object) -> object:
        dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
        return lambda m: dumps(json_format.MessageToDict(m, preserving_proto_field_name=True))

    saved = (LoadedSchema.wire_bodies, LoadedSchema.converter, LoadedSchema.json_converter)
    out = []
    try:
        n, elapsed, _, _ = time_cat_json(path)
        out.append(("as shipped (wire fast path, generated encoders)", n / elapsed))
        LoadedSchema.wire_bodies = lambda _self: None  # type: ignore[method-assign]
        n, elapsed, _, _ = time_cat_json(path)
        out.append(("without compile_wire_json (upb + compile_json)", n / elapsed))
        LoadedSchema.converter = dict_of  # type: ignore[method-assign, assignment]
        LoadedSchema.json_converter = json_of  # type: ignore[method-assign, assignment]
        n, elapsed, _, _ = time_cat_json(path)
        out.append(("without any generated code (json_format + json.dumps)", n / elapsed))
    finally:
        LoadedSchema.wire_bodies, LoadedSchema.converter, LoadedSchema.json_converter = saved  # type: ignore[method-assign]
    return out


def _verdict(rate: float) -> str:
    return "PASS" if rate >= BAR_MSG_PER_S else "BELOW BAR"


def calibrate() -> float:
    """ms for an empty 1M-iteration Python loop: how busy the machine is right now."""
    start = time.perf_counter()
    for _ in range(1_000_000):
        pass
    return (time.perf_counter() - start) * 1e3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.inspect", description=__doc__)
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--recorder-messages", type=int, default=100_000)
    # ``python -m bench`` calls main() with its own argv in sys.argv: take ours only when given.
    args = parser.parse_args([] if argv is None else argv)
    with tempfile.TemporaryDirectory(prefix="sleap-rtc-bench-") as tmp_name:
        tmp = Path(tmp_name)
        capture = tmp / "bench.mcap"
        built = build_capture(capture, args.messages)
        size = os.path.getsize(capture)
        print(f"capture: {args.messages:,} messages, {size / 1e6:.1f} MB, built in {built:.1f} s")
        before = calibrate()
        n, elapsed, out_bytes, cpu = time_cat_json(capture)
        rate, cpu_rate = n / elapsed, n / cpu
        print(
            f"inspect cat --json, one process: {n:,} records in {elapsed:.2f} s wall = "
            f"{rate:,.0f} msg/s [bar {BAR_MSG_PER_S:,}: {_verdict(rate)}]; {cpu:.2f} s CPU = "
            f"{cpu_rate:,.0f} msg/s per core [{_verdict(cpu_rate)}] "
            f"({out_bytes / 1e6:.0f} MB of JSON; calibration {before:.0f}/{calibrate():.0f} ms)"
        )
        from sleap_rtc.inspect.cat import idle_cpus

        jobs = os.cpu_count() or 1
        default = idle_cpus()  # what `cat --json` picks now for a capture over 16 MB
        parallel_rate = 0.0
        if jobs > 1:
            before = calibrate()
            n, elapsed, _, cpu = time_cat_json(capture, jobs)
            parallel_rate = n / elapsed
            print(
                f"inspect cat --json --jobs {jobs}: "
                f"{n:,} records in {elapsed:.2f} s wall = {parallel_rate:,.0f} msg/s "
                f"[{_verdict(parallel_rate)}]; the ordering process used {cpu:.2f} s CPU "
                f"(calibration {before:.0f}/{calibrate():.0f} ms)"
            )
        if default == 1:
            default_rate = rate
        elif default == jobs:
            default_rate = parallel_rate
        else:
            n, elapsed, _, _ = time_cat_json(capture, default)
            default_rate = n / elapsed
        small = tmp / "ablation.mcap"
        build_capture(small, min(args.messages, 100_000))
        figures = time_without_generated(small)
        print(
            "what the generated encoders buy (cat --json, one process, 100k messages): "
            + "; ".join(f"{what} {r:,.0f} msg/s" for what, r in figures)
        )
        baseline = figures[-1][1]  # json_format + json.dumps, measured in this process
        n, elapsed, _, _ = time_cat_json(capture, 1, pair=False)
        unpaired = n / elapsed
        print(
            f"side by side: one process {rate:,.0f} msg/s, default mode ({default} process"
            f"{'es' if default > 1 else ''} on {jobs} CPUs at load {os.getloadavg()[0]:.1f}) "
            f"{default_rate:,.0f} msg/s; same-process baseline (json_format + json.dumps) "
            f"{baseline:,.0f} msg/s = one process x{rate / baseline:.2f}, default "
            f"x{default_rate / baseline:.2f}; one process without request/answer links "
            f"{unpaired:,.0f} msg/s"
        )
        bare_ns, rec_ns, drain_ns = time_recorder(args.recorder_messages, tmp)
        print(
            f"recorder: send on a bare in-memory link {bare_ns:,.0f} ns/msg, through RecordingLink "
            f"{rec_ns:,.0f} ns/msg (overhead {rec_ns - bare_ns:,.0f} ns/msg on the session's "
            "thread); the writer thread's own work (classify, redact, MCAP) "
            f"{drain_ns:,.0f} ns CPU/msg"
        )
        print(
            f"calibration: an empty 1M-iteration Python loop takes {calibrate():.0f} ms "
            "here (about 15-25 ms on a current desktop; more means a busy machine)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
