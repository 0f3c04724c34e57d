"""SlurmRun's decisions with scripted Slurm answers: what each end looks like to the client.

The real cluster is in test_slurm_backend.py; here the commands and the hub are
stand-ins so the rare ends can be given exactly: Slurm forgets the job (after its
MinJobAge) with and without the relay's result file, a garbled result file, each
terminal state without a relay, the relay's result while Slurm still says RUNNING,
an unreachable controller during polls, and Stop while the job is still queued.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from sleap_rtc.config.worker import SlurmSettings
from sleap_rtc.worker.jobrecord import Job, RunResult
from sleap_rtc.worker.jobstore import BatchRecord, JobStore
from sleap_rtc.worker.relaywire import RelayMessage, Result, write_result
from sleap_rtc.worker.slurmctl import SlurmJobInfo, SlurmUnreachable
from sleap_rtc.worker.slurmrun import SlurmBackend, SlurmRun
from sleap_rtc.worker.trainplan import TrainPlan
from sleap_rtc_proto.v1 import job_pb2, progress_pb2

P = progress_pb2

Answer = SlurmJobInfo | None | Exception


@dataclass
class Commands:
    """Slurm's answers to ``query``, one per poll (the last repeats)."""

    answers: list[Answer]
    cancelled: list[tuple[str, str | None, bool]] = field(default_factory=list)

    async def query(self, job_id: str) -> SlurmJobInfo | None:
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def cancel(self, job_id: str, *, signal: str | None = None, batch: bool = False) -> None:
        self.cancelled.append((job_id, signal, batch))


@dataclass
class Hub:
    connected: bool = False
    sent: list[str] = field(default_factory=list)
    listener: Callable[[RelayMessage], None] | None = None

    def register(self, job_id: str, key: str, on: Any, *, after_seq: int = 0) -> None:
        self.listener = on

    def unregister(self, job_id: str) -> None:
        self.listener = None

    def send(self, job_id: str, action: str) -> bool:
        self.sent.append(action)
        return self.connected


def info(state: str, exit_code: int | None = 0, reason: str = "") -> SlurmJobInfo:
    return SlurmJobInfo("42", state, reason=reason, node="n1", exit_code=exit_code, signal=0)


def make_run(tmp_path: Path, answers: list[Answer], hub: Hub | None = None) -> tuple[SlurmRun, Job]:
    store = JobStore(tmp_path / "state")
    run_dir = tmp_path / "runs" / "job"
    run_dir.mkdir(parents=True)
    folder = tmp_path / "runs" / ".relay" / "job"
    folder.mkdir(parents=True)
    job = Job(
        job_id="job",
        spec_hash="h",
        owner="me",
        accepted=job_pb2.JobAccepted(job_id="job"),
        plan=TrainPlan(
            config_file=tmp_path / "c.yaml",
            labels_path="/l.slp",
            ckpt_dir=tmp_path / "runs",
            run_name="job",
        ),
        store=store,
    )
    job.save()
    commands = Commands(answers)
    backend = SlurmBackend(
        settings=SlurmSettings(poll_s=0.01, time_limit="30"),
        commands=commands,  # type: ignore[arg-type]
        poller=commands,  # type: ignore[arg-type]
        hub=hub or Hub(),  # type: ignore[arg-type]
        store=store,
        trainer_command=("sleap-nn", "train"),
        confinement="off",
        mounts=(str(tmp_path),),
    )
    record = BatchRecord("job", "slurm", "42", str(folder), "pub")
    return SlurmRun(backend, job, record), job


def finish(run: SlurmRun, job: Job) -> progress_pb2.JobComplete | progress_pb2.JobFailed:
    async def go() -> RunResult:
        return await asyncio.wait_for(run.run(), 30)

    final = job.finish(asyncio.run(go()))
    assert isinstance(final, P.JobComplete | P.JobFailed)
    return final


def lines(job: Job) -> list[str]:
    return [line for m in job.replay(0)[0] if isinstance(m, P.JobLog) for line in m.lines]


def test_a_job_slurm_forgot_ends_as_its_relay_result_file_says(tmp_path: Path) -> None:
    run, job = make_run(tmp_path, [info("RUNNING"), None])
    write_result(run.folder, RunResult(completed=True, stopped_early=True, duration_s=5.0))
    end = finish(run, job)
    assert isinstance(end, P.JobComplete) and end.stopped_early
    assert end.scheduler.state == "UNKNOWN" and end.scheduler.id == "42"


def test_a_job_slurm_forgot_without_a_result_fails_saying_so(tmp_path: Path) -> None:
    run, job = make_run(tmp_path, [None])
    (run.folder / "slurm.log").write_text("module: command not found\n")
    end = finish(run, job)
    assert isinstance(end, P.JobFailed)
    assert "no longer knows job 42" in end.message
    assert list(end.log_tail) == ["module: command not found"]  # Slurm's own log


def test_a_garbled_result_file_is_said_not_trusted(tmp_path: Path) -> None:
    run, job = make_run(tmp_path, [info("COMPLETED")])
    (run.folder / "result.json").write_text("{not json")
    end = finish(run, job)
    assert isinstance(end, P.JobFailed)
    assert any("result file cannot be read" in line for line in lines(job)), lines(job)


@pytest.mark.parametrize(
    ("state", "code", "words"),
    [
        ("TIMEOUT", P.FAILURE_CODE_TIMEOUT, "time limit"),
        ("NODE_FAIL", P.FAILURE_CODE_TRAINER_EXITED, "node failed"),
        ("OUT_OF_MEMORY", P.FAILURE_CODE_TRAINER_EXITED, "out of memory"),
        ("CANCELLED", P.FAILURE_CODE_CANCELLED, "not by this worker"),
        ("FAILED", P.FAILURE_CODE_TRAINER_EXITED, "before its relay reported"),
    ],
)
def test_each_end_state_without_a_relay_is_named(
    tmp_path: Path, state: str, code: int, words: str
) -> None:
    run, job = make_run(tmp_path, [info(state, exit_code=1)])
    end = finish(run, job)
    assert isinstance(end, P.JobFailed)
    assert end.code == code and words in end.message, end.message
    assert end.scheduler.state == state and end.scheduler.exit_code == 1


def test_the_relays_timeout_is_reported_as_slurms_time_limit(tmp_path: Path) -> None:
    hub = Hub()
    run, job = make_run(tmp_path, [info("RUNNING"), info("TIMEOUT", exit_code=0)], hub)
    run.listen()
    assert hub.listener is not None
    hub.listener(
        Result(
            job_id="job",
            seq=1,
            result=RunResult(
                completed=False, failure_code=P.FAILURE_CODE_CANCELLED, message="terminated"
            ),
        )
    )
    end = finish(run, job)
    assert isinstance(end, P.JobFailed) and end.code == P.FAILURE_CODE_TIMEOUT
    assert "time limit (30)" in end.message


def test_an_unreachable_controller_is_said_once_then_its_return(tmp_path: Path) -> None:
    down = SlurmUnreachable("squeue: Unable to contact slurm controller")
    write = [info("RUNNING"), down, down, down, info("RUNNING"), info("COMPLETED")]
    run, job = make_run(tmp_path, write)
    write_result(run.folder, RunResult(completed=True))
    end = finish(run, job)
    assert isinstance(end, P.JobComplete)
    said = lines(job)
    assert sum("not answering" in line for line in said) == 1, said
    assert sum("answers again" in line for line in said) == 1, said


def test_stop_while_queued_cancels_and_nothing_trained(tmp_path: Path) -> None:
    hub = Hub(connected=False)
    run, job = make_run(tmp_path, [info("PENDING", exit_code=None, reason="Resources")], hub)

    async def go() -> RunResult:
        task = asyncio.ensure_future(run.run())
        await asyncio.sleep(0.1)
        run.stop()
        run.backend.commands.answers[:] = [info("CANCELLED", exit_code=0)]  # type: ignore[attr-defined]
        return await asyncio.wait_for(task, 30)

    end = job.finish(asyncio.run(go()))
    assert isinstance(end, P.JobFailed) and end.code == P.FAILURE_CODE_CANCELLED
    assert "queued in Slurm" in end.message
    assert ("42", None, False) in run.backend.commands.cancelled  # type: ignore[attr-defined]
    assert any("waiting (Resources)" in line for line in lines(job)), lines(job)


def test_stop_with_no_relay_connected_is_scancel_batch_int(tmp_path: Path) -> None:
    hub = Hub(connected=False)
    run, job = make_run(tmp_path, [info("RUNNING"), info("COMPLETED")], hub)
    write_result(run.folder, RunResult(completed=True, stopped_early=True))

    async def go() -> RunResult:
        task = asyncio.ensure_future(run.run())
        await asyncio.sleep(0.05)
        run.stop()
        return await asyncio.wait_for(task, 30)

    end = job.finish(asyncio.run(go()))
    assert isinstance(end, P.JobComplete) and end.stopped_early
    assert hub.sent == ["stop"]
    assert ("42", "INT", True) in run.backend.commands.cancelled  # type: ignore[attr-defined]
    assert json.loads((run.folder / "result.json").read_text())["stopped_early"] is True
