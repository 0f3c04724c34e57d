"""kill -9 of a real worker process at each job state, restart, retry with the same job id.

The worker runs in its own process (``support/tcp_worker.py``: the real
WorkerService and job store, reached over loopback TCP); the trainer is the
stand-in trainer, a real process. After each kill: no trainer left running,
the restarted worker answers the same job id with the first JobAccepted
(``duplicate``) and a JobFailed that says what happened -- never a second
training, never a ``<job>-1`` folder, no temp config left.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from slp_factory import make_h5_video, make_labels
from support.client import RawClient
from support.tcp_worker import StreamLink

from sleap_rtc.worker.jobstore import JobStore
from sleap_rtc.worker.orphans import group_alive
from sleap_rtc_proto.codec import body_of
from sleap_rtc_proto.v1 import job_pb2, paths_pb2, progress_pb2, spec_pb2

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="uses /proc and PR_SET_PDEATHSIG"
)

SUPPORT = Path(__file__).parent / "support"
V = job_pb2
P = progress_pb2


class World:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.mnt = tmp / "mnt"
        self.state = tmp / "state"
        video = make_h5_video(self.mnt / "data" / "v.h5")
        self.labels = make_labels(self.mnt / "data" / "labels.slp", [video])
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.hold = tmp / "release"

    def start(self, trainer: str = "paced_trainer.py") -> None:
        port_file = self.tmp / f"port-{time.monotonic_ns()}"
        log = (self.tmp / "worker.log").open("ab")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                str(SUPPORT / "tcp_worker.py"),
                str(self.mnt),
                str(self.state),
                str(port_file),
                json.dumps([sys.executable, str(SUPPORT / trainer), "train"]),
            ],
            stdout=log,
            stderr=log,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        )
        deadline = time.monotonic() + 60
        while not port_file.exists():
            assert self.proc.poll() is None, (self.tmp / "worker.log").read_text()
            assert time.monotonic() < deadline, "the worker did not start"
            time.sleep(0.05)
        self.port = int(port_file.read_text())

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None

    def row(self, job_id: str) -> Any:
        store = JobStore(self.state)
        try:
            return store.get(job_id)
        finally:
            store.close()

    def wait_row(self, job_id: str, ok: Any, timeout: float = 30.0) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            row = self.row(job_id)
            if row is not None and ok(row):
                return row
            time.sleep(0.02)
        raise AssertionError(f"job {job_id}: the store never reached the state; {self.row(job_id)}")

    async def client(self) -> RawClient:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        client = RawClient(StreamLink(reader, writer))
        ack = await client.hello()
        assert ack.WhichOneof("body") == "hello_ack", ack
        return client

    def submit(self, job_id: str, token: str, **fake: Any) -> V.JobSubmit:
        config = (
            "model_config:\n  backbone_config: {}\n"
            f"fake: {json.dumps({'epochs': 3, 'batches': 2, **fake})}\n"
        )
        return V.JobSubmit(
            job_id=job_id,
            spec=spec_pb2.TrainJobSpec(labels_path=str(self.labels), config_content=config),
            check_token=token,
        )

    def trainers_left(self) -> list[int]:
        """Processes whose command line names this test's state folder (the trainer's
        --config lies in it)."""
        out = []
        for name in os.listdir("/proc"):
            if not name.isdigit() or int(name) == os.getpid():
                continue
            try:
                cmd = Path(f"/proc/{name}/cmdline").read_bytes()
                stat = Path(f"/proc/{name}/stat").read_text()
            except OSError:
                continue
            if stat[stat.rfind(")") + 2] in "ZX":
                continue
            if str(self.state / "configs").encode() in cmd:
                out.append(int(name))
        return out


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = World(tmp_path)
    try:
        yield w
    finally:
        w.stop()
        for pid in w.trainers_left():
            os.kill(pid, signal.SIGKILL)


async def check_token(client: RawClient, world: World) -> str:
    answer = body_of(
        await client.request(paths_pb2.PathCheckRequest(labels_path=str(world.labels)))
    )
    assert isinstance(answer, paths_pb2.PathCheckResult) and answer.check_token, answer
    return answer.check_token


async def retry_after_restart(world: World, job_id: str, **fake: Any) -> P.JobFailed:
    """The documented retry: check, submit with the same job id, follow to the end."""
    client = await world.client()
    token = await check_token(client, world)
    answer = body_of(await client.request(world.submit(job_id, token, **fake)))
    assert isinstance(answer, V.JobAccepted), answer
    assert answer.duplicate, "the same job id started a second training"
    status = body_of(await client.request(V.JobAttach(job_id=job_id, after_sequence=0)))
    assert isinstance(status, V.JobStatus) and status.state == V.JOB_STATE_FAILED, status
    end = await client.until_job_end(job_id, timeout=10)
    assert isinstance(end, P.JobFailed), end
    assert end.code == P.FAILURE_CODE_WORKER_SHUTDOWN
    await client.link.close()
    return end


def assert_clean(world: World, job_id: str) -> None:
    assert world.trainers_left() == []
    runs = sorted(p.name for p in (world.mnt / "sleap-rtc-runs").iterdir())
    assert runs == [job_id], runs  # no <job>-1: nothing ran twice
    assert list((world.state / "configs").iterdir()) == []  # no temp config left


def test_kill9_while_running_then_restart_and_retry(world: World) -> None:
    async def before() -> int:
        client = await world.client()
        token = await check_token(client, world)
        submit = world.submit("run-1", token, hold_file=str(world.hold), hold_after_epoch=0)
        answer = body_of(await client.request(submit))
        assert isinstance(answer, V.JobAccepted), answer
        while not any(
            isinstance(m, P.JobProgress) and m.event == P.PROGRESS_EVENT_EPOCH_END
            for m in client.job_messages("run-1")
        ):
            await client.next(20)
        return max(m.sequence for m in client.job_messages("run-1"))

    world.start()
    seen = asyncio.run(before())
    row = world.wait_row("run-1", lambda r: r.trainer is not None)
    assert row.state == V.JOB_STATE_RUNNING and row.last_sequence >= seen
    trainer = row.trainer
    assert group_alive(trainer.pid, trainer.start_ticks)  # a quiet trainer, held mid-run
    world.kill9()
    killed = time.monotonic()
    while group_alive(trainer.pid, trainer.start_ticks) and time.monotonic() - killed < 5:
        time.sleep(0.01)
    orphan_s = time.monotonic() - killed
    assert not group_alive(trainer.pid, trainer.start_ticks)
    assert orphan_s < 1.0, f"the trainer outlived its worker by {orphan_s:.2f} s"
    world.hold.touch()  # were it still alive, it would train on now
    world.start()
    end = asyncio.run(
        retry_after_restart(world, "run-1", hold_file=str(world.hold), hold_after_epoch=0)
    )
    assert end.sequence > seen  # numbered after everything the client saw
    assert f"trainer (pid {trainer.pid}) ended with it" in end.message
    assert_clean(world, "run-1")


def test_kill9_right_after_accepted_then_restart_and_retry(world: World) -> None:
    async def before() -> None:
        client = await world.client()
        token = await check_token(client, world)
        answer = body_of(await client.request(world.submit("acc-1", token)))
        assert isinstance(answer, V.JobAccepted), answer
        world.kill9()  # at once: the trainer may or may not have been started

    world.start()
    asyncio.run(before())
    world.start()
    end = asyncio.run(retry_after_restart(world, "acc-1"))
    assert "nothing ran" in end.message or "ended with it" in end.message, end.message
    assert_clean(world, "acc-1")


def test_kill9_while_finishing_then_restart_and_retry(world: World) -> None:
    """The trainer exited; the worker drains its last progress (about 0.3 s) before it
    records the result. A kill -9 there must not turn into a claim either way."""

    async def submit(job_id: str) -> None:
        client = await world.client()
        token = await check_token(client, world)
        answer = body_of(await client.request(world.submit(job_id, token, epochs=1)))
        assert isinstance(answer, V.JobAccepted), answer
        await client.link.close()

    for attempt in range(5):  # bounded: the window is short on a loaded machine
        job_id = f"fin-{attempt}"
        world.start()
        asyncio.run(submit(job_id))
        row = world.wait_row(
            job_id, lambda r: r.message.startswith("finishing:") or r.final is not None
        )
        world.kill9()
        if world.row(job_id).final is None:
            break
    else:
        pytest.skip("never caught the finishing step in 5 tries")
    assert row.message.startswith("finishing:")
    world.start()
    end = asyncio.run(retry_after_restart(world, job_id, epochs=1))
    assert "exited with status 0" in end.message and "outcome is unknown" in end.message
    assert (world.mnt / "sleap-rtc-runs" / job_id / "best.ckpt").exists()
    assert world.trainers_left() == []
    assert list((world.state / "configs").iterdir()) == []


def test_a_second_worker_on_the_same_state_folder_is_refused(world: World) -> None:
    world.start()
    first = world.proc
    with pytest.raises(AssertionError, match="another worker"):
        world.start()
    world.proc = first
