"""The start-up sweep: jobs the store recorded as open end with a JobFailed that says why.

When a worker starts, every job its store still records as queued, running or
stopping belonged to a worker process that died without recording the end
(kill -9, a crash, a power cut). For each, in this order:

- a trainer recorded for it that is still alive (same pid *and* process start
  time) is stopped (SIGTERM, SIGKILL after the grace) -- never two trainers
  for one job, and never one without a worker;
- the job is marked failed (``FAILURE_CODE_WORKER_SHUTDOWN``) with the true
  reason: the trainer never started; it ended with the worker; it had exited
  but the worker died before recording the result; or it was found running
  unsupervised and was stopped.

The JobFailed is committed before any client can attach, so a client that
retries with the same job id gets this answer (a duplicate JobAccepted and
the JobFailed), not a second training.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sleap_rtc.worker.jobrecord import Job, RunResult
from sleap_rtc.worker.jobs import JobRegistry
from sleap_rtc.worker.orphans import group_alive, stop_group
from sleap_rtc_proto.v1 import job_pb2, progress_pb2

__all__ = ["Recovered", "sweep"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Recovered:
    """One job the sweep ended, and what it did."""

    job_id: str
    reason: str
    stopped_pids: tuple[int, ...] = ()


def _reason(job: Job, grace_s: float, batch_id: str | None) -> tuple[str, tuple[int, ...]]:
    trainer = job.trainer
    keep = f"; the run folder {job.run_dir} keeps whatever the trainer wrote"
    if batch_id is not None:
        which = f"Slurm job {batch_id}" if batch_id else "a Slurm job (its id was never recorded)"
        return (
            f"this job was handed to Slurm as {which}, and this worker's trainer backend "
            f"is no longer Slurm, so it cannot follow it; it may still run in Slurm "
            f"(scancel {batch_id or 'it'} to end it){keep}",
            (),
        )
    if job.message.startswith("finishing:"):
        status = job.message.removeprefix("finishing:").strip()
        return (
            f"the worker stopped after {status.removeprefix('the trainer ')} "
            f"but before it recorded the result, so the outcome is unknown{keep}",
            (),
        )
    if trainer is None:
        if job.state == job_pb2.JOB_STATE_QUEUED:
            return "the worker stopped before this job's trainer started; nothing ran", ()
        return "the worker stopped while starting this job's trainer; nothing ran", ()
    alive = group_alive(trainer.pid, trainer.start_ticks)  # [] when the start is unknown
    if alive:
        how = stop_group(trainer.pid, trainer.start_ticks, grace_s=grace_s)
        return (
            f"the worker stopped while this job ran; its trainer (pid {trainer.pid}) was "
            f"found still running without a worker when the worker restarted, and was "
            f"{how.removeprefix('stopped ')}{keep}",
            tuple(alive),
        )
    return (
        f"the worker stopped while this job ran, and its trainer (pid {trainer.pid}) "
        f"ended with it{keep}",
        (),
    )


def sweep(
    registry: JobRegistry, *, grace_s: float = 10.0, skip: frozenset[str] = frozenset()
) -> list[Recovered]:
    """End every job the store records as open, except those in ``skip`` (batch jobs
    the worker re-attached to); blocking: it may wait ``grace_s`` for a trainer to
    stop. Call before serving any connection."""
    out = []
    for row in registry.store.open_jobs():
        if row.job_id in skip:
            continue
        job = Job.from_row(row, registry.store, registry.config.history_limit)
        record = registry.store.batch(row.job_id)
        reason, pids = _reason(job, grace_s, None if record is None else record.batch_id)
        job.finish(
            RunResult(
                completed=False,
                failure_code=progress_pb2.FAILURE_CODE_WORKER_SHUTDOWN,
                message=reason,
            )
        )
        registry.remember(job)
        log.warning("job %s: %s", job.job_id, reason)
        out.append(Recovered(job.job_id, reason, pids))
    return out
