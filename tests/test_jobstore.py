"""jobstore.py, recovery.py, orphans.py: the job store on disk, idempotency with no count
window, the start-up sweep (with real processes), one worker per state folder."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from slp_factory import make_h5_video, make_labels

from sleap_rtc.worker.jobrecord import Job, RunResult
from sleap_rtc.worker.jobs import IntakeConfig, JobRegistry
from sleap_rtc.worker.jobstore import JobStore, StoreError, TrainerIdentity
from sleap_rtc.worker.mounts import MountPolicy
from sleap_rtc.worker.orphans import (
    StateLock,
    die_with_worker,
    group_alive,
    process_start_ticks,
)
from sleap_rtc.worker.recovery import sweep
from sleap_rtc_proto.v1 import job_pb2, progress_pb2, spec_pb2

V = job_pb2
P = progress_pb2
CONFIG = "model_config:\n  backbone_config: {}\ntrainer_config:\n  max_epochs: 1\n"


class Control:
    def stop(self) -> None:
        pass

    def cancel(self, code: int = 0, message: str = "") -> None:
        pass


@pytest.fixture
def world(tmp_path: Path) -> dict[str, Any]:
    mnt = tmp_path / "mnt"
    video = make_h5_video(mnt / "data" / "v.h5")
    labels = make_labels(mnt / "data" / "labels.slp", [video])
    return {"tmp": tmp_path, "mnt": mnt, "labels": labels, "state": tmp_path / "state"}


def registry(world: dict[str, Any], **kw: Any) -> JobRegistry:
    base: dict[str, Any] = dict(
        policy=MountPolicy([world["mnt"]]),
        state_dir=world["state"],
        runs_dir=world["mnt"] / "runs",
        require_check_token=False,
    )
    base.update(kw)
    reg = JobRegistry(IntakeConfig(**base))
    reg.prepare()
    return reg


def submit(world: dict[str, Any], job_id: str, **spec: Any) -> V.JobSubmit:
    spec.setdefault("config_content", CONFIG)
    return V.JobSubmit(
        job_id=job_id, spec=spec_pb2.TrainJobSpec(labels_path=str(world["labels"]), **spec)
    )


def accept(reg: JobRegistry, message: V.JobSubmit) -> Job:
    answer, job = reg.submit_job(message)
    assert isinstance(answer, V.JobAccepted), answer
    assert job is not None
    return job


def sleeper() -> subprocess.Popen[bytes]:
    """A real process in its own session, like a trainer; quiet (never prints)."""
    return subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True
    )


def identity(proc: subprocess.Popen[bytes]) -> TrainerIdentity:
    for _ in range(100):
        ticks = process_start_ticks(proc.pid)
        if ticks:
            return TrainerIdentity(proc.pid, ticks, 5555, 5556)
        time.sleep(0.01)
    raise AssertionError("no /proc entry for the child")


# --- the store ---------------------------------------------------------------------


def test_store_is_wal_sqlite_and_private(world: dict[str, Any]) -> None:
    reg = registry(world)
    path = world["state"] / "jobs.sqlite3"
    assert path.is_file()
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    mode = reg.store._db.execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_each_state_change_is_committed_before_any_listener_hears_of_it(
    world: dict[str, Any],
) -> None:
    reg = registry(world)
    job = accept(reg, submit(world, "j1"))
    other = JobStore(world["state"])  # a second connection sees only what was committed
    row = other.get("j1")
    assert row is not None and row.state == V.JOB_STATE_QUEUED  # before JobAccepted is sent
    seen: list[tuple[int, int, bool]] = []

    def listener(message: Any) -> None:
        stored = other.get("j1")
        assert stored is not None
        seen.append((message.sequence, stored.last_sequence, stored.final is not None))

    job.subscribe(listener)
    job.start(Control())
    assert other.get("j1").state == V.JOB_STATE_RUNNING  # type: ignore[union-attr]
    job.emit_log(P.LOG_STREAM_STDOUT, ["line"])
    job.finish(RunResult(completed=True))
    assert seen == [(1, 1, False), (2, 2, True)]
    stored = other.get("j1")
    assert stored is not None and stored.state == V.JOB_STATE_COMPLETED
    assert isinstance(stored.final, P.JobComplete) and stored.final.sequence == 2


def test_idempotency_has_no_count_window_1001_jobs_then_a_retry(world: dict[str, Any]) -> None:
    reg = registry(world)
    first = accept(reg, submit(world, "job-0"))
    first.start(Control())
    first.finish(RunResult(completed=True))
    for n in range(1, 1002):
        job = accept(reg, submit(world, f"other-{n}"))
        job.finish(RunResult(completed=True))
    assert len(reg.jobs()) <= reg.config.max_finished_jobs + 1  # memory stays bounded
    again, new_job = reg.submit_job(submit(world, "job-0"))
    assert isinstance(again, V.JobAccepted) and again.duplicate, again
    assert new_job is None  # no second training
    assert not (world["mnt"] / "runs" / "job-0-1").exists()
    conflict, _ = reg.submit_job(submit(world, "job-0", max_epochs=3))
    assert isinstance(conflict, V.JobRejected)
    # and after a restart (a new registry on the same state folder)
    reg2 = registry(world)
    again2, new2 = reg2.submit_job(submit(world, "job-0"))
    assert isinstance(again2, V.JobAccepted) and again2.duplicate and new2 is None
    job = reg2.get("job-0")
    assert job is not None and job.state == V.JOB_STATE_COMPLETED
    messages, dropped = job.replay(0)
    assert [type(m) for m in messages] == [P.JobComplete] and dropped == 0


def test_retention_forgets_ended_jobs_only_after_the_operator_period(
    world: dict[str, Any],
) -> None:
    reg = registry(world, retention_s=3600.0)
    done = accept(reg, submit(world, "old"))
    done.finish(RunResult(completed=True))
    running = accept(reg, submit(world, "live", run_name="live"))
    running.start(Control())
    assert reg.store.purge(3600.0) == 0
    assert reg.store.purge(3600.0, now=time.time() + 7200) == 1
    assert reg.store.get("old") is None and reg.store.get("live") is not None
    assert reg.store.purge(None, now=time.time() + 10**9) == 0


def test_a_store_from_a_newer_worker_is_refused(world: dict[str, Any]) -> None:
    store = JobStore(world["state"])
    store._db.execute("UPDATE meta SET value='99' WHERE key='schema'")
    store.close()
    with pytest.raises(StoreError, match="newer worker"):
        JobStore(world["state"])


# --- the start-up sweep ----------------------------------------------------------------


def test_restart_accepted_job_never_started_ends_failed_with_reason(
    world: dict[str, Any],
) -> None:
    reg = registry(world)
    accept(reg, submit(world, "queued"))
    config_files = list((world["state"] / "configs").iterdir())
    assert config_files
    reg2 = registry(world)  # the worker died; a new one starts on the same state folder
    ended = sweep(reg2, grace_s=1.0)
    assert [e.job_id for e in ended] == ["queued"]
    job = reg2.get("queued")
    assert job is not None and job.state == V.JOB_STATE_FAILED
    assert isinstance(job.final, P.JobFailed)
    assert job.final.code == P.FAILURE_CODE_WORKER_SHUTDOWN
    assert "before this job's trainer started; nothing ran" in job.final.message
    assert not any(p.exists() for p in config_files)  # no temp config left
    assert sweep(reg2) == []  # once


def test_restart_stops_a_live_orphan_trainer_and_says_so(world: dict[str, Any]) -> None:
    reg = registry(world)
    job = accept(reg, submit(world, "run"))
    job.start(Control())
    proc = sleeper()
    try:
        job.trainer_started(identity(proc))
        job.emit_log(P.LOG_STREAM_STDOUT, ["epoch 1"])
        reg2 = registry(world)
        started = time.monotonic()
        ended = sweep(reg2, grace_s=2.0)
        took = time.monotonic() - started
        assert proc.wait(timeout=5) == -signal.SIGTERM
        assert took < 3.0
        assert ended[0].stopped_pids == (proc.pid,)
        final = reg2.get("run").final  # type: ignore[union-attr]
        assert isinstance(final, P.JobFailed)
        assert f"pid {proc.pid}" in final.message and "still running" in final.message
        assert final.sequence == 2  # after everything a client may have seen
        again, new = reg2.submit_job(submit(world, "run"))
        assert isinstance(again, V.JobAccepted) and again.duplicate and new is None
        messages, dropped = reg2.get("run").replay(1)  # type: ignore[union-attr]
        assert [m.sequence for m in messages] == [2] and dropped == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_restart_kills_an_orphan_that_ignores_sigterm(world: dict[str, Any]) -> None:
    reg = registry(world)
    job = accept(reg, submit(world, "stubborn"))
    job.start(Control())
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "print('ready', flush=True); time.sleep(120)",
        ],
        start_new_session=True,
        stdout=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
        job.trainer_started(identity(proc))
        ended = sweep(registry(world), grace_s=0.5)
        assert proc.wait(timeout=10) == -signal.SIGKILL
        assert "killed with SIGKILL" in ended[0].reason
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_restart_does_not_touch_a_process_that_reused_the_pid(world: dict[str, Any]) -> None:
    reg = registry(world)
    job = accept(reg, submit(world, "reused"))
    job.start(Control())
    proc = sleeper()
    try:
        real = identity(proc)
        # The recorded start time differs: another process now has this pid.
        job.trainer_started(TrainerIdentity(real.pid, real.start_ticks + 12345, 1, 2))
        ended = sweep(registry(world), grace_s=0.5)
        assert proc.poll() is None  # left alone
        assert "ended with it" in ended[0].reason
    finally:
        proc.kill()
        proc.wait()


def test_restart_while_finishing_says_the_outcome_is_unknown(world: dict[str, Any]) -> None:
    reg = registry(world)
    job = accept(reg, submit(world, "fin"))
    job.start(Control())
    job.trainer_exited(0)
    ended = sweep(registry(world))
    assert "exited with status 0" in ended[0].reason
    assert "outcome is unknown" in ended[0].reason


# --- the death signal and the state lock ---------------------------------------------


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux")
def test_a_child_started_with_die_with_worker_dies_with_its_parent(tmp_path: Path) -> None:
    """A parent process starts a quiet child the way the worker starts a trainer, then is
    killed with SIGKILL; the child must be gone within a second."""
    pid_file = tmp_path / "child.pid"
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import subprocess, sys, time\n"
            "from sleap_rtc.worker.orphans import die_with_worker\n"
            "c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'],"
            " start_new_session=True, preexec_fn=die_with_worker())\n"
            f"open({str(pid_file)!r}, 'w').write(str(c.pid))\n"
            "time.sleep(120)\n",
        ],
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    try:
        deadline = time.monotonic() + 20
        while not (pid_file.exists() and pid_file.read_text()) and time.monotonic() < deadline:
            time.sleep(0.02)
        child = int(pid_file.read_text())
        ticks = process_start_ticks(child)
        assert ticks
        parent.kill()
        parent.wait()
        killed = time.monotonic()
        while group_alive(child, ticks) and time.monotonic() - killed < 5:
            time.sleep(0.01)
        assert not group_alive(child, ticks)
        assert time.monotonic() - killed < 1.0
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
    assert die_with_worker() is not None


def test_one_worker_per_state_folder(tmp_path: Path) -> None:
    other_process = [
        sys.executable,
        "-c",
        "import sys; from pathlib import Path\n"
        "from sleap_rtc.worker.orphans import StateLock, StateLocked\n"
        "try:\n    StateLock(Path(sys.argv[1])).acquire()\n"
        "except StateLocked as exc:\n    print(exc); sys.exit(3)\n",
        str(tmp_path),
    ]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    first = StateLock(tmp_path)
    assert first.acquire() is True
    refused = subprocess.run(other_process, capture_output=True, text=True, env=env, timeout=60)
    assert refused.returncode == 3, refused.stderr
    assert f"another worker (pid {os.getpid()})" in refused.stdout
    shared = StateLock(tmp_path)  # a second service of this process (the demo's in-memory one)
    assert shared.acquire() is False
    first.release()
    assert subprocess.run(other_process, env=env, timeout=60).returncode == 3  # still shared
    shared.release()
    assert subprocess.run(other_process, env=env, timeout=60).returncode == 0


def test_the_run_plan_round_trips_through_the_store() -> None:
    import dataclasses

    from sleap_rtc.worker.jobstore import plan_from_json, plan_to_json
    from sleap_rtc.worker.trainplan import TrainPlan

    plan = TrainPlan(
        config_file=Path("/state/configs/job-1.yaml"),
        labels_path="/mnt/lab/labels.slp",
        ckpt_dir=Path("/mnt/lab/runs"),
        run_name="run",
        max_epochs=3,
        learning_rate=1e-4,
        video_path_map=(("/laptop/a.mp4", "/mnt/lab/a.mp4"),),
        prefix_map=(("C:/data", "/mnt/lab/data"),),
    )
    for field in dataclasses.fields(TrainPlan):  # every field, including later additions
        assert hasattr(plan, field.name)
    assert plan_from_json(plan_to_json(plan)) == plan
