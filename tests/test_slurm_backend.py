"""The Slurm trainer backend end to end, on a real single-node Slurm (``scripts/slurm.sh``).

A real WorkerService with ``backend = "slurm"`` (in this process, or in its own
process for kill -9), the real relay in each batch job, the stand-in trainer
that speaks sleap-nn's ZMQ shapes (real sleap-nn in ``test_real_training...``),
a raw protocol client. Each test's jobs carry its own name prefix and are
cancelled at its end (``support.slurm``).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from slp_factory import make_h5_video, make_labels
from support.client import RawClient
from support.relays import free_port
from support.slurm import (  # noqa: F401
    SlurmTest,
    slurm_cluster_fixture,
    slurm_exclusive_fixture,
    slurm_fixture,
)
from support.tcp_worker import StreamLink

from sleap_rtc.config.worker import SlurmSettings
from sleap_rtc.transport.link import memory_link_pair
from sleap_rtc.worker.jobstore import JobStore
from sleap_rtc.worker.service import WorkerService
from sleap_rtc.worker.serviceconfig import WorkerConfig
from sleap_rtc.worker.slurmbatch import job_name_for
from sleap_rtc.worker.slurmrun import RELAY_FOLDER
from sleap_rtc.worker.trainer import RunLimits
from sleap_rtc_proto.codec import body_of
from sleap_rtc_proto.v1 import job_pb2, paths_pb2, progress_pb2, spec_pb2

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(300)]

SUPPORT = Path(__file__).parent / "support"
FAKE = (sys.executable, str(SUPPORT / "paced_trainer.py"), "train")
V = job_pb2
P = progress_pb2


@dataclass
class World:
    tmp: Path
    slurm: SlurmTest
    mnt: Path
    state: Path
    labels: Path
    port: int

    def settings(self, **kw: Any) -> SlurmSettings:
        where = f"127.0.0.1:{self.port}"
        return self.slurm.settings(**{"listen": where, "worker_address": where, **kw})

    def config(self, **kw: Any) -> WorkerConfig:
        slurm_kw = kw.pop("slurm", {})
        base: dict[str, Any] = dict(
            mounts=[self.mnt],
            state_dir=self.state,
            verifier=None,
            trainer_command=FAKE,
            build_index=False,
            token_secret=b"k" * 32,
            confinement="off",  # the stand-in trainer lives in tests/support
            run_limits=RunLimits(no_progress_timeout_s=120, term_grace_s=3),
            backend="slurm",
            slurm=self.settings(**slurm_kw),
            slurm_env=self.slurm.env,
            max_concurrent_jobs=2,
        )
        base.update(kw)
        return WorkerConfig(**base)

    def submit(self, job_id: str, token: str, **fake: Any) -> V.JobSubmit:
        config = (
            "model_config:\n  backbone_config: {}\n"
            f"fake: {json.dumps({'epochs': 3, 'batches': 2, **fake})}\n"
        )
        return V.JobSubmit(
            job_id=self.slurm.job_id(job_id),
            spec=spec_pb2.TrainJobSpec(labels_path=str(self.labels), config_content=config),
            check_token=token,
        )

    def relay_dirs(self) -> list[Path]:
        root = self.mnt / "sleap-rtc-runs" / RELAY_FOLDER
        return sorted(root.iterdir()) if root.is_dir() else []


@pytest.fixture
def world(tmp_path: Path, slurm: SlurmTest) -> World:
    mnt = tmp_path / "mnt"
    video = make_h5_video(mnt / "data" / "v.h5")
    labels = make_labels(mnt / "data" / "labels.slp", [video])
    return World(tmp_path, slurm, mnt, tmp_path / "state", labels, free_port())


Connect = Callable[..., Awaitable[RawClient]]
FEATURES = ("fragments", "attach", "scheduler")


def serve(
    world: World, body: Callable[[WorkerService, Connect], Awaitable[Any]], **kw: Any
) -> Any:
    """Start a Slurm-backed service, run ``body(service, connect)``, always close."""

    async def main() -> Any:
        service = WorkerService(world.config(**kw))
        await service.start()
        serving: list[asyncio.Task[None]] = []

        async def connect(features: tuple[str, ...] = FEATURES) -> RawClient:
            client_end, worker_end = memory_link_pair()
            serving.append(asyncio.create_task(service.serve(worker_end, peer_id="c")))
            client = RawClient(client_end)
            ack = await client.hello(features=features)
            assert ack.WhichOneof("body") == "hello_ack", ack
            return client

        try:
            async with asyncio.timeout(240):
                return await body(service, connect)
        finally:
            await service.close()
            for task in serving:
                task.cancel()
            await asyncio.gather(*serving, return_exceptions=True)

    return asyncio.run(main())


async def check_token(client: RawClient, world: World) -> str:
    answer = body_of(
        await client.request(paths_pb2.PathCheckRequest(labels_path=str(world.labels)))
    )
    assert isinstance(answer, paths_pb2.PathCheckResult) and answer.check_token, answer
    return answer.check_token


async def until_epoch_end(client: RawClient, job_id: str, timeout: float = 120) -> None:
    """Read until the job's first epoch_end arrived (bounded)."""
    while not any(
        isinstance(m, P.JobProgress) and m.event == P.PROGRESS_EVENT_EPOCH_END
        for m in client.job_messages(job_id)
    ):
        await client.next(timeout)


def scheduler_lines(client: RawClient, job_id: str) -> list[P.JobLog]:
    return [
        m
        for m in client.job_messages(job_id)
        if isinstance(m, P.JobLog) and m.HasField("scheduler")
    ]


def test_a_job_runs_as_a_batch_job_with_progress_and_the_slurm_id(world: World) -> None:
    async def body(service: WorkerService, connect: Connect) -> Any:
        client = await connect()
        token = await check_token(client, world)
        submit = world.submit("ok", token)
        accepted = body_of(await client.request(submit, timeout=60))
        assert isinstance(accepted, V.JobAccepted), accepted
        assert accepted.scheduler.system == "slurm"
        assert accepted.scheduler.id.isdigit()
        assert accepted.scheduler.state == "PENDING"
        end = await client.until_job_end(submit.job_id, timeout=180)
        return accepted, end, client.job_messages(submit.job_id), scheduler_lines(
            client, submit.job_id
        )

    accepted, end, messages, lines = serve(world, body)
    assert isinstance(end, P.JobComplete), end
    assert end.scheduler.id == accepted.scheduler.id
    assert end.scheduler.state == "COMPLETED"
    assert end.scheduler.exit_code == 0
    events = [m.event for m in messages if isinstance(m, P.JobProgress)]
    assert events[0] == P.PROGRESS_EVENT_TRAIN_BEGIN
    assert events.count(P.PROGRESS_EVENT_EPOCH_END) == 3
    assert events[-1] == P.PROGRESS_EVENT_TRAIN_END
    sequences = [m.sequence for m in messages]
    assert sequences == sorted(sequences) and len(set(sequences)) == len(sequences)
    states = [log.scheduler.state for log in lines]
    assert "RUNNING" in states, states
    assert any(o.endswith("best.ckpt") for o in end.outputs), end.outputs
    # Slurm ran exactly one batch job for it, named for the job.
    assert len(world.relay_dirs()) == 1
    assert (world.relay_dirs()[0] / "result.json").is_file()


def test_a_client_without_the_feature_sees_the_same_job_in_words(world: World) -> None:
    async def body(service: WorkerService, connect: Connect) -> Any:
        old = await connect(features=("fragments", "attach"))
        new = await connect()
        token = await check_token(old, world)
        submit = world.submit("words", token)
        accepted = body_of(await old.request(submit, timeout=60))
        assert isinstance(accepted, V.JobAccepted), accepted
        await new.request(V.JobAttach(job_id=submit.job_id, after_sequence=0))
        end = await old.until_job_end(submit.job_id, timeout=180)
        await new.until_job_end(submit.job_id, timeout=30)
        return accepted, end, old.job_messages(submit.job_id), new.job_messages(submit.job_id)

    accepted, end, old, new = serve(world, body)
    assert not accepted.HasField("scheduler")
    assert not end.HasField("scheduler")
    assert not any(m.HasField("scheduler") for m in old if isinstance(m, P.JobLog))
    words = [line for m in old if isinstance(m, P.JobLog) for line in m.lines]
    assert any("Slurm job" in line and "running" in line for line in words), words
    typed = [m for m in new if isinstance(m, P.JobLog) and m.HasField("scheduler")]
    assert typed and all(m.scheduler.system == "slurm" for m in typed)


def test_stop_early_goes_over_the_relay_and_keeps_the_checkpoint(world: World) -> None:
    hold = world.tmp / "release"

    async def body(service: WorkerService, connect: Connect) -> Any:
        client = await connect()
        token = await check_token(client, world)
        submit = world.submit("stop", token, epochs=50, batch_sleep=0.05)
        accepted = body_of(await client.request(submit, timeout=60))
        assert isinstance(accepted, V.JobAccepted), accepted
        await until_epoch_end(client, submit.job_id)
        status = body_of(
            await client.request(
                V.JobControl(job_id=submit.job_id, action=V.CONTROL_ACTION_STOP)
            )
        )
        assert isinstance(status, V.JobStatus), status
        return await client.until_job_end(submit.job_id, timeout=120)

    end = serve(world, body)
    assert not hold.exists()
    assert isinstance(end, P.JobComplete), end
    assert end.stopped_early
    assert end.scheduler.state == "COMPLETED"
    assert any(o.endswith("best.ckpt") for o in end.outputs), end.outputs


def test_cancel_is_scancel_and_the_job_fails_cancelled(world: World) -> None:
    async def body(service: WorkerService, connect: Connect) -> Any:
        client = await connect()
        token = await check_token(client, world)
        submit = world.submit("cancel", token, epochs=500, batch_sleep=0.05)
        accepted = body_of(await client.request(submit, timeout=60))
        assert isinstance(accepted, V.JobAccepted), accepted
        while not any(
            isinstance(m, P.JobProgress) for m in client.job_messages(submit.job_id)
        ):
            await client.next(120)
        await client.request(V.JobControl(job_id=submit.job_id, action=V.CONTROL_ACTION_CANCEL))
        return accepted, await client.until_job_end(submit.job_id, timeout=120)

    accepted, end = serve(world, body)
    assert isinstance(end, P.JobFailed), end
    assert end.code == P.FAILURE_CODE_CANCELLED
    assert end.scheduler.id == accepted.scheduler.id
    assert end.scheduler.state == "CANCELLED", end.scheduler
    state = world.slurm.run("squeue", "-h", "-t", "all", "-j", accepted.scheduler.id, "-o", "%T")
    assert state.stdout.strip() == "CANCELLED", state.stdout


def test_a_failing_trainer_fails_the_batch_job_with_its_exit_code(world: World) -> None:
    async def body(service: WorkerService, connect: Connect) -> Any:
        client = await connect()
        token = await check_token(client, world)
        submit = world.submit("fail", token, mode="fail")
        accepted = body_of(await client.request(submit, timeout=60))
        assert isinstance(accepted, V.JobAccepted), accepted
        return await client.until_job_end(submit.job_id, timeout=180)

    end = serve(world, body)
    assert isinstance(end, P.JobFailed), end
    assert end.code == P.FAILURE_CODE_TRAINER_EXITED
    assert end.exit_code != 0
    assert end.scheduler.state == "FAILED"
    assert end.scheduler.exit_code == end.exit_code
    assert end.log_tail, "the trainer's last lines are in the failure"


def test_sbatch_refused_is_a_job_rejected_naming_the_option(world: World) -> None:
    async def body(service: WorkerService, connect: Connect) -> Any:
        client = await connect()
        token = await check_token(client, world)
        submit = world.submit("refused", token)
        first = body_of(await client.request(submit, timeout=60))
        again = body_of(await client.request(submit, timeout=60))
        return submit, first, again

    submit, first, again = serve(world, body, slurm={"partition": "no-such-partition"})
    assert isinstance(first, V.JobRejected), first
    assert "partition" in first.violations[0].field, first
    assert "Slurm refused the batch job (slurm --partition)" in first.message, first.message
    # Nothing was queued or remembered: the same job id is refused again, not "accepted".
    assert isinstance(again, V.JobRejected), again
    assert world.relay_dirs() == []
    assert not (world.mnt / "sleap-rtc-runs" / submit.job_id).exists()
    store = JobStore(world.state)
    try:
        assert store.get(submit.job_id) is None
    finally:
        store.close()


def test_two_jobs_one_slot_the_second_waits_in_slurms_queue(world: World) -> None:
    hold = world.tmp / "release"
    cpus = world.slurm.cpus

    async def body(service: WorkerService, connect: Connect) -> Any:
        client = await connect()
        token = await check_token(client, world)
        one = world.submit("one", token, hold_file=str(hold), hold_after_epoch=0)
        two = world.submit("two", token)
        a = body_of(await client.request(one, timeout=60))
        b = body_of(await client.request(two, timeout=60))
        assert isinstance(a, V.JobAccepted) and isinstance(b, V.JobAccepted), (a, b)
        deadline = time.monotonic() + 60
        while not any(
            log.scheduler.state == "PENDING" and log.scheduler.reason
            for log in scheduler_lines(client, two.job_id)
        ):
            assert time.monotonic() < deadline, scheduler_lines(client, two.job_id)
            await client.next(60)
        waiting = [log for log in scheduler_lines(client, two.job_id)]
        status = body_of(await client.request(V.JobAttach(job_id=two.job_id, after_sequence=0)))
        # While it waits, its relay folder (in the mounts, which every trainer may read)
        # holds no key: the key waits in Slurm, in the batch job's environment.
        specs = [json.loads((d / "relay.json").read_text()) for d in world.relay_dirs()]
        assert len(specs) == 2 and all(spec["client_secret"] == "" for spec in specs), specs
        hold.touch()
        end_one = await client.until_job_end(one.job_id, timeout=180)
        end_two = await client.until_job_end(two.job_id, timeout=180)
        return waiting, status, end_one, end_two

    # One slot: each job asks for every CPU of the node.
    waiting, status, end_one, end_two = serve(world, body, slurm={"cpus_per_task": cpus})
    assert isinstance(status, V.JobStatus) and status.state == V.JOB_STATE_QUEUED, status
    assert status.scheduler.state == "PENDING"
    assert "queued in Slurm" in waiting[0].lines[0]
    assert isinstance(end_one, P.JobComplete), end_one
    assert isinstance(end_two, P.JobComplete), end_two


def test_slurmctld_restarted_during_a_training(
    tmp_path: Path, slurm_exclusive: SlurmTest
) -> None:
    mnt = tmp_path / "mnt"
    video = make_h5_video(mnt / "data" / "v.h5")
    w = World(tmp_path, slurm_exclusive, mnt, tmp_path / "state",
              make_labels(mnt / "data" / "labels.slp", [video]), free_port())
    hold = tmp_path / "release"

    async def body(service: WorkerService, connect: Connect) -> Any:
        client = await connect()
        token = await check_token(client, w)
        # ~24 s of training after the hold: slurmctld is back (and has re-read its
        # jobs) well before the end, so the end state is Slurm's own.
        submit = w.submit("ctld", token, hold_file=str(hold), hold_after_epoch=0,
                          epochs=120, batch_sleep=0.1)
        accepted = body_of(await client.request(submit, timeout=60))
        assert isinstance(accepted, V.JobAccepted), accepted

        def epochs() -> int:
            return sum(
                1 for m in client.job_messages(submit.job_id)
                if isinstance(m, P.JobProgress) and m.event == P.PROGRESS_EVENT_EPOCH_END
            )

        while epochs() == 0:
            await client.next(120)
        await asyncio.to_thread(slurm_exclusive.stop_controller)
        hold.touch()  # the training goes on while slurmctld is down
        before = epochs()
        deadline = time.monotonic() + 60
        while not any(
            "not answering" in line
            for m in client.job_messages(submit.job_id)
            if isinstance(m, P.JobLog)
            for line in m.lines
        ):
            assert time.monotonic() < deadline, "the outage was never reported"
            await client.next(60)
        during = epochs() - before
        await asyncio.to_thread(slurm_exclusive.start_controller)
        end = await client.until_job_end(submit.job_id, timeout=180)
        return end, client.job_messages(submit.job_id), during

    end, messages, during = serve(w, body, slurm={"command_timeout_s": 3.0})
    assert during > 0, "no progress arrived while slurmctld was down"
    assert isinstance(end, P.JobComplete), end
    words = [line for m in messages if isinstance(m, P.JobLog) for line in m.lines]
    assert end.scheduler.state == "COMPLETED", [w for w in words if "Slurm" in w]
    assert any("answers again" in line for line in words), words
    epochs = [m for m in messages if isinstance(m, P.JobProgress)
              and m.event == P.PROGRESS_EVENT_EPOCH_END]
    assert len(epochs) == 120


# --- a worker process killed with SIGKILL during a training -------------------------------


def test_worker_kill9_during_a_training_reattaches_and_never_submits_twice(
    world: World,
) -> None:
    hold = world.tmp / "release"
    port_file = world.tmp / "port"
    extra = json.dumps(
        {
            "backend": "slurm",
            "max_concurrent_jobs": 2,
            "slurm": {
                "partition": world.slurm.partition,
                "bin_dir": str(world.slurm.bin_dir),
                "listen": f"127.0.0.1:{world.port}",
                "worker_address": f"127.0.0.1:{world.port}",
                "poll_s": 0.5,
                "command_timeout_s": 20,
                "unreachable_s": 30,
            },
        }
    )

    def start() -> subprocess.Popen[bytes]:
        port_file.unlink(missing_ok=True)
        log = (world.tmp / "worker.log").open("ab")
        proc = subprocess.Popen(
            [sys.executable, str(SUPPORT / "tcp_worker.py"), str(world.mnt), str(world.state),
             str(port_file), json.dumps(list(FAKE)), extra],
            stdout=log, stderr=log,
            env={**world.slurm.env, "PYTHONPATH": os.pathsep.join(sys.path)},
        )
        deadline = time.monotonic() + 60
        while not port_file.exists():
            assert proc.poll() is None, (world.tmp / "worker.log").read_text()
            assert time.monotonic() < deadline
            time.sleep(0.05)
        return proc

    async def connect() -> RawClient:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", int(port_file.read_text())
        )
        client = RawClient(StreamLink(reader, writer))
        assert (await client.hello(features=FEATURES)).WhichOneof("body") == "hello_ack"
        return client

    async def before() -> tuple[V.JobSubmit, str, int]:
        client = await connect()
        token = await check_token(client, world)
        submit = world.submit("k9", token, hold_file=str(hold), hold_after_epoch=0)
        accepted = body_of(await client.request(submit, timeout=60))
        assert isinstance(accepted, V.JobAccepted), accepted
        await until_epoch_end(client, submit.job_id)
        seen = max(m.sequence for m in client.job_messages(submit.job_id))
        await client.link.close()
        return submit, accepted.scheduler.id, seen

    async def after(submit: V.JobSubmit, seen: int) -> Any:
        client = await connect()
        token = await check_token(client, world)
        again = body_of(await client.request(submit_with(submit, token), timeout=60))
        status = body_of(
            await client.request(V.JobAttach(job_id=submit.job_id, after_sequence=seen))
        )
        hold.touch()
        end = await client.until_job_end(submit.job_id, timeout=180)
        return again, status, end, client.job_messages(submit.job_id)

    proc = start()
    try:
        submit, batch_id, seen = asyncio.run(before())
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        proc = start()
        again, status, end, messages = asyncio.run(after(submit, seen))
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
    assert isinstance(again, V.JobAccepted) and again.duplicate, again
    assert isinstance(status, V.JobStatus), status
    assert status.state in (V.JOB_STATE_QUEUED, V.JOB_STATE_RUNNING), status
    assert status.scheduler.id == batch_id
    assert isinstance(end, P.JobComplete), end
    assert end.scheduler.id == batch_id
    # Progress resumed after the restart: later epochs arrived, numbered after `seen`.
    later = [m for m in messages if isinstance(m, P.JobProgress) and m.sequence > seen]
    assert any(m.event == P.PROGRESS_EVENT_EPOCH_END for m in later), later
    # One batch job for the job id, ever.
    named = world.slurm.run("squeue", "-h", "-t", "all", "-n", job_name_for(submit.job_id),
                            "-o", "%i")
    assert named.stdout.split() == [batch_id], named.stdout
    assert len(world.relay_dirs()) == 1


def submit_with(submit: V.JobSubmit, token: str) -> V.JobSubmit:
    again = V.JobSubmit()
    again.CopyFrom(submit)
    again.check_token = token
    return again


# --- real sleap-nn through Slurm, into a LossViewer-shaped subscriber ------------------------


def _lossviewer_sees(progress: list[P.JobProgress]) -> list[dict[str, Any]]:
    """Publish the job's progress through the client's LossViewer bridge to a SUB bound
    the way SLEAP's LossViewer binds; return the JSON it received."""
    import threading

    import zmq

    from sleap_rtc.client.lossviewer import LossViewerBridge

    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.setsockopt(zmq.RCVHWM, 0)
    port = sub.bind_to_random_port("tcp://127.0.0.1")
    got: list[dict[str, Any]] = []
    running = True

    def poll() -> None:  # like LossViewer's QTimer
        while running:
            if sub.poll(20, zmq.POLLIN):
                while sub.poll(0, zmq.POLLIN):
                    got.append(json.loads(sub.recv_string()))

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    try:
        with LossViewerBridge(publish_port=port, controller_port=None, context=ctx) as bridge:
            for message in progress:
                bridge.publish(message)
            deadline = time.monotonic() + 10
            while len(got) < bridge.sent and time.monotonic() < deadline:
                time.sleep(0.05)
    finally:
        running = False
        thread.join(5)
        sub.close(linger=0)
        ctx.term()
    return got


@pytest.mark.train
def test_real_sleap_nn_training_through_slurm_into_lossviewer(
    tmp_path: Path, slurm: SlurmTest
) -> None:
    import importlib.util
    import shutil

    if importlib.util.find_spec("sleap_nn") is None:
        pytest.skip("sleap-nn is not installed (the train extra)")
    from sleap_rtc.demo import CLIENT_PREFIX, make_dataset, training_config_yaml
    from sleap_rtc.worker.confine import probe

    beside = Path(sys.executable).parent / "sleap-nn"
    command = str(beside) if beside.exists() else shutil.which("sleap-nn")
    if command is None:
        pytest.skip("the sleap-nn command is not installed")
    data = make_dataset(tmp_path, frames=16)
    w = World(tmp_path, slurm, data.share, tmp_path / "state", data.labels_path, free_port())
    mapping = {CLIENT_PREFIX: str(data.project)}

    async def body(service: WorkerService, connect: Connect) -> Any:
        client = await connect()
        check = body_of(
            await client.request(
                paths_pb2.PathCheckRequest(
                    labels_path=str(data.labels_path), prefix_mappings=mapping
                ),
                timeout=60,
            )
        )
        assert isinstance(check, paths_pb2.PathCheckResult) and check.check_token, check
        submit = V.JobSubmit(
            job_id=slurm.job_id("real"),
            spec=spec_pb2.TrainJobSpec(
                labels_path=str(data.labels_path),
                config_content=training_config_yaml(str(data.labels_path), max_epochs=2),
                prefix_mappings=mapping,
                max_epochs=2,
            ),
            check_token=check.check_token,
        )
        started = time.monotonic()
        accepted = body_of(await client.request(submit, timeout=60))
        assert isinstance(accepted, V.JobAccepted), accepted
        end = await client.until_job_end(submit.job_id, timeout=400)
        print(f"real sleap-nn through Slurm: {time.monotonic() - started:.1f} s wall")
        return accepted, end, client.job_messages(submit.job_id)

    accepted, end, messages = serve(
        w,
        body,
        trainer_command=(command, "train"),
        confinement="auto",
        run_limits=RunLimits(no_progress_timeout_s=300, max_run_s=400),
    )
    logs = [line for m in messages if isinstance(m, P.JobLog) for line in m.lines]
    assert isinstance(end, P.JobComplete), (end, logs[-30:])
    assert end.scheduler.state == "COMPLETED" and end.scheduler.id == accepted.scheduler.id
    if probe().network:  # the relay ran the trainer under the worker's Landlock ruleset
        assert any("trainer confined by Landlock ABI" in line for line in logs), logs[:8]
    assert any(p.endswith("best.ckpt") for p in end.outputs), end.outputs
    progress = [m for m in messages if isinstance(m, P.JobProgress)]
    shapes = _lossviewer_sees(progress)
    events = [s["event"] for s in shapes]
    assert events[0] == "train_begin" and events[-1] == "train_end", events
    assert events.count("epoch_end") == 2
    epoch_end = next(s for s in shapes if s["event"] == "epoch_end")
    assert "val_loss" in epoch_end["logs"] or "val/loss" in epoch_end["logs"], epoch_end


def _start_held(world: World, hold: Path, name: str) -> Callable[..., Awaitable[Any]]:
    async def body(service: WorkerService, connect: Connect) -> Any:
        client = await connect()
        token = await check_token(client, world)
        submit = world.submit(name, token, hold_file=str(hold), hold_after_epoch=0)
        accepted = body_of(await client.request(submit, timeout=60))
        assert isinstance(accepted, V.JobAccepted), accepted
        await until_epoch_end(client, submit.job_id)
        seen = max(m.sequence for m in client.job_messages(submit.job_id))
        return submit.job_id, accepted.scheduler.id, seen

    return body


def test_a_graceful_close_leaves_the_batch_job_and_the_next_worker_reattaches(
    world: World,
) -> None:
    hold = world.tmp / "release"
    job_id, batch_id, seen = serve(world, _start_held(world, hold, "close"))
    # The worker closed; its batch job did not.
    state = world.slurm.run("squeue", "-h", "-t", "all", "-j", batch_id, "-o", "%T")
    assert state.stdout.strip() == "RUNNING", state.stdout

    async def after(service: WorkerService, connect: Connect) -> Any:
        client = await connect()
        status = body_of(await client.request(V.JobAttach(job_id=job_id, after_sequence=seen)))
        hold.touch()
        return status, await client.until_job_end(job_id, timeout=180), client.job_messages(
            job_id
        )

    status, end, messages = serve(world, after)
    assert isinstance(status, V.JobStatus) and status.state == V.JOB_STATE_RUNNING, status
    assert isinstance(end, P.JobComplete), end
    assert end.scheduler.id == batch_id
    later = [m for m in messages if isinstance(m, P.JobProgress) and m.sequence > seen]
    assert [m.event for m in later].count(P.PROGRESS_EVENT_EPOCH_END) >= 2, later


def test_a_worker_switched_back_to_local_names_the_slurm_job_to_scancel(world: World) -> None:
    hold = world.tmp / "release"
    job_id, batch_id, _ = serve(world, _start_held(world, hold, "switch"))

    async def after(service: WorkerService, connect: Connect) -> Any:
        client = await connect()
        status = body_of(await client.request(V.JobAttach(job_id=job_id, after_sequence=0)))
        return status, await client.until_job_end(job_id, timeout=30)

    status, end = serve(world, after, backend="local")
    assert isinstance(status, V.JobStatus) and status.state == V.JOB_STATE_FAILED, status
    assert isinstance(end, P.JobFailed), end
    assert end.code == P.FAILURE_CODE_WORKER_SHUTDOWN
    assert f"scancel {batch_id}" in end.message, end.message


def test_stop_without_a_relay_connection_falls_back_to_scancel_signal_int(world: World) -> None:
    """The relay cannot reach the worker (a wrong worker_address): Stop becomes
    ``scancel --batch --signal=INT``, the relay turns it into sleap-nn's stop, and the
    worker reads the outcome from the relay folder once Slurm says the job ended."""

    async def body(service: WorkerService, connect: Connect) -> Any:
        client = await connect()
        token = await check_token(client, world)
        submit = world.submit("fallback", token, epochs=500, batch_sleep=0.05)
        accepted = body_of(await client.request(submit, timeout=60))
        assert isinstance(accepted, V.JobAccepted), accepted
        deadline = time.monotonic() + 60
        while not any(
            log.scheduler.state == "RUNNING" for log in scheduler_lines(client, submit.job_id)
        ):
            assert time.monotonic() < deadline
            await client.next(60)
        await asyncio.sleep(3)  # the trainer is past train_begin (no relay to tell us)
        await client.request(V.JobControl(job_id=submit.job_id, action=V.CONTROL_ACTION_STOP))
        end = await client.until_job_end(submit.job_id, timeout=180)
        progress = [m for m in client.job_messages(submit.job_id) if isinstance(m, P.JobProgress)]
        return end, progress

    end, progress = serve(
        world, body, slurm={"worker_address": f"127.0.0.1:{free_port()}"}
    )
    assert progress == []  # nothing came through: the relay never reached the worker
    assert isinstance(end, P.JobComplete), end
    assert end.stopped_early
    assert end.scheduler.state == "COMPLETED"
    assert any(o.endswith("best.ckpt") for o in end.outputs), end.outputs


def test_a_slurm_setting_no_batch_script_can_hold_stops_the_worker_at_start(
    world: World,
) -> None:
    """Checked once at start-up (not per job, after each job's folder was written)."""

    async def main() -> str:
        service = WorkerService(world.config(slurm={"extra_sbatch": ("--job-name=mine",)}))
        with pytest.raises(ValueError) as info:
            await service.start()
        return str(info.value)

    message = asyncio.run(main())
    assert message.startswith("[slurm] extra_sbatch") and "--job-name" in message, message
    assert world.relay_dirs() == []
