"""Builders of captures shared by the capture and inspect tests (and a self-check)."""

from __future__ import annotations

from pathlib import Path

from sleap_rtc.capture.write.recorder import CaptureWriter
from sleap_rtc_proto.stream import MessageStream
from sleap_rtc_proto.v1 import error_pb2, handshake_pb2, job_pb2, paths_pb2, progress_pb2, spec_pb2
from sleap_rtc_proto.versions import CURRENT

TOKEN = (
    "eyJhbGciOiJFZERTQSIsImtpZCI6ImsxIn0.eyJzdWIiOiJhbGljZSIsInJvb20iOiJsYWIifQ"
    ".c2lnbmF0dXJlLXNlY3JldA"
)
C2W, W2C = "client_to_worker", "worker_to_client"
T0 = 1_800_000_000_000_000_000


class Clock:
    """A fake wall clock: each reading is 1 ms after the previous one."""

    def __init__(self, start: int = T0, step: int = 1_000_000) -> None:
        self.now = start
        self.step = step

    def __call__(self) -> int:
        self.now += self.step
        return self.now


def session_capture(
    path: Path,
    *,
    progress: int = 20,
    big_result: bool = False,
    legacy: bool = True,
    garbage: bool = True,
    writer: CaptureWriter | None = None,
    connection_id: str = "conn-1",
) -> list[tuple[str, bytes]]:
    """Record a whole presubmission + training conversation; returns the frames sent."""
    own = writer is None
    w = writer or CaptureWriter(path, background=False, clock=Clock(), compression="none")
    conn = w.connection(
        connection_id, local_peer="client-7", remote_peer="worker-3", local_role="client"
    )
    client = MessageStream()
    worker = MessageStream(max_frame_bytes=4096)
    sent: list[tuple[str, bytes]] = []

    def put(direction: str, frames: list[bytes]) -> None:
        for frame in frames:
            sent.append((direction, frame))
            w.record(conn, direction, frame)

    hello_id, frames = client.send(
        handshake_pb2.Hello(
            min_version=CURRENT.to_proto(),
            max_version=CURRENT.to_proto(),
            software="sleap-rtc 0.1.0",
            components={"sleap": "1.6.6"},
            token=TOKEN,
            client_name="laptop",
        )
    )
    put(C2W, frames)
    put(
        W2C,
        worker.send(
            handshake_pb2.HelloAck(
                chosen_version=CURRENT.to_proto(),
                min_version=CURRENT.to_proto(),
                max_version=CURRENT.to_proto(),
                software="sleap-rtc 0.1.0",
                components={"sleap-nn": "0.3.5"},
                worker_id="worker-3",
            ),
            correlation_id=hello_id,
        )[1],
    )
    check_id, frames = client.send(paths_pb2.PathCheckRequest(labels_path="/data/labels.slp"))
    put(C2W, frames)
    videos = [
        paths_pb2.VideoCheck(
            index=i,
            original_path=f"/Users/me/v{i}.mp4",
            worker_path=f"/mnt/v{i}.mp4",
            status=paths_pb2.PATH_STATUS_FOUND,
            kind=paths_pb2.VIDEO_KIND_FILE,
        )
        for i in range(400 if big_result else 2)
    ]
    put(
        W2C,
        worker.send(
            paths_pb2.PathCheckResult(
                labels=paths_pb2.PathEntry(
                    original_path="/data/labels.slp", status=paths_pb2.PATH_STATUS_FOUND
                ),
                videos=videos,
                check_token="ct-1",
            ),
            correlation_id=check_id,
        )[1],
    )
    spec = spec_pb2.TrainJobSpec(
        config_content="model: x\n", labels_path="/data/labels.slp", max_epochs=3
    )
    submit_id, frames = client.send(
        job_pb2.JobSubmit(job_id="job-1", spec=spec, check_token="ct-1")
    )
    put(C2W, frames)
    put(
        W2C,
        worker.send(
            job_pb2.JobAccepted(job_id="job-1", run_dir="/runs/job-1"), correlation_id=submit_id
        )[1],
    )
    for i in range(progress):
        event = (
            progress_pb2.PROGRESS_EVENT_TRAIN_BEGIN
            if i == 0
            else progress_pb2.PROGRESS_EVENT_BATCH_END
        )
        put(
            W2C,
            worker.send(
                progress_pb2.JobProgress(
                    job_id="job-1",
                    sequence=i + 1,
                    event=event,
                    epoch=i // 10,
                    batch=i % 10,
                    metrics={"loss": 1.0 / (i + 1)},
                )
            )[1],
        )
    put(
        W2C,
        worker.send(
            progress_pb2.JobLog(job_id="job-1", sequence=progress + 1, lines=["epoch 1 done"])
        )[1],
    )
    stop_id, frames = client.send(
        job_pb2.JobControl(job_id="job-1", action=job_pb2.CONTROL_ACTION_STOP)
    )
    put(C2W, frames)
    put(
        W2C,
        worker.send(
            job_pb2.JobStatus(job_id="job-1", state=job_pb2.JOB_STATE_RUNNING),
            correlation_id=stop_id,
        )[1],
    )
    bad_id, frames = client.send(job_pb2.JobAttach(job_id="nope"))
    put(C2W, frames)
    put(
        W2C,
        worker.send(
            error_pb2.Error(code=error_pb2.ERROR_CODE_NOT_FOUND, message="no job nope"),
            correlation_id=bad_id,
        )[1],
    )
    put(
        W2C,
        worker.send(
            progress_pb2.JobComplete(
                job_id="job-1", sequence=progress + 2, run_dir="/runs/job-1", stopped_early=True
            )
        )[1],
    )
    if legacy:
        put(W2C, [b'JOB_PROGRESS::{"event": "epoch_end", "logs": {"val/loss": 0.5}}'])
    if garbage:
        put(C2W, [b"\xff\xfe not protobuf \x00"])
    if own:
        w.close()
    return sent


def test_session_capture_builds(tmp_path: Path) -> None:
    sent = session_capture(tmp_path / "c.mcap")
    assert len(sent) > 20
    assert (tmp_path / "c.mcap").stat().st_size > 0
