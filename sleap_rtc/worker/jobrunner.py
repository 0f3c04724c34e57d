"""Starts accepted jobs on the worker's trainer backend and follows each to its end.

Two backends (``[trainer] backend``):

- ``local``: :class:`~.trainer.TrainerRun`, the confined trainer as a
  subprocess of this worker; it dies with the worker, and the start-up sweep
  (:func:`~.recovery.sweep`) ends what a dead worker left open.
- ``slurm``: :class:`~.slurmrun.SlurmRun`, a batch job per accepted job. The
  submission happens before the client's JobAccepted (which then names
  Slurm's job id); an ``sbatch`` refusal is a JobRejected naming the option.
  Batch jobs outlive the worker: :meth:`JobRunner.adopt` re-attaches those the
  job store records as open, and a graceful :meth:`JobRunner.close` leaves
  them running for the next worker life.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import shutil
from collections.abc import Callable
from pathlib import Path

import zmq.asyncio

from sleap_rtc.worker.jobrecord import Job, RunResult
from sleap_rtc.worker.jobs import JobRegistry
from sleap_rtc.worker.launcher import LaunchPolicy
from sleap_rtc.worker.relayhub import RelayHub
from sleap_rtc.worker.serviceconfig import WorkerConfig
from sleap_rtc.worker.slurmbatch import job_name_for, render_batch_script
from sleap_rtc.worker.slurmctl import SbatchRefused, SlurmCommands, SlurmUnreachable
from sleap_rtc.worker.slurmrun import SlurmBackend, SlurmRun
from sleap_rtc.worker.trainer import TrainerRun
from sleap_rtc.worker.zmqprogress import ProgressUpdate
from sleap_rtc_proto.v1 import job_pb2, progress_pb2, scheduler_pb2

__all__ = ["JobRunner"]

log = logging.getLogger(__name__)

#: How long a submit waits for sbatch before the client hears JobAccepted with the
#: scheduler state SUBMITTING (the worker keeps trying for ``[slurm] unreachable_s``).
SUBMIT_ANSWER_S = 20.0


class _JobSink:
    """Routes a run's output into its job's numbered history."""

    def __init__(self, job: Job) -> None:
        self.job = job

    def progress(self, update: ProgressUpdate) -> None:
        self.job.emit_progress(update)

    def log(self, stream: int, lines: list[str]) -> None:
        self.job.emit_log(stream, lines)


Run = TrainerRun | SlurmRun


class JobRunner:
    """The worker's running jobs, on its configured backend."""

    def __init__(
        self,
        config: WorkerConfig,
        registry: JobRegistry,
        sandbox: LaunchPolicy,
        notice: Callable[[str], None],
    ) -> None:
        self.config = config
        self.registry = registry
        self.sandbox = sandbox
        self.notice = notice
        self.zmq: zmq.asyncio.Context | None = None
        self.slurm: SlurmBackend | None = None
        self._runs: dict[str, asyncio.Task[None]] = {}
        self._detach = False

    @property
    def batch(self) -> bool:
        """True when jobs go to a batch scheduler (Slurm)."""
        return self.config.backend == "slurm"

    def describe(self) -> str:
        """One line for the start-up message and ``workers``."""
        if self.slurm is None:
            return "local (a subprocess of this worker)"
        settings = self.slurm.settings
        where = f"partition {settings.partition}" if settings.partition else "default partition"
        return f"slurm ({where}; relays connect to {self.slurm.hub.endpoint})"

    # --- life cycle -------------------------------------------------------------

    async def start(self, context: zmq.asyncio.Context) -> None:
        """Open what the backend needs (the Slurm relay endpoint)."""
        self.zmq = context
        self._detach = False
        if not self.batch:
            return
        settings = self.config.slurm
        # Every [slurm] value must go into a batch script: refuse at start-up, not per job.
        try:
            render_batch_script(
                settings,
                job_name=job_name_for("check"),
                run_dir=Path("/check"),
                log_file=Path("/check/slurm.log"),
                relay_argv=[settings.python or "python"],
            )
        except ValueError as exc:
            raise ValueError(f"[slurm] {exc}") from None
        commands = SlurmCommands(settings, env=self.config.slurm_env)
        problem = await commands.available()
        if problem is not None:
            log.warning("Slurm does not answer yet (%s); submissions will retry", problem)
        host, _, port = settings.listen.rpartition(":")
        advertise = settings.worker_address or f"{_public_name(host)}:{port}"
        hub = RelayHub(
            context,
            listen=settings.listen,
            advertise=advertise,
            key_dir=Path(self.config.state_dir) / "relay-keys",
        )
        await hub.start()
        self.slurm = SlurmBackend(
            settings=settings,
            commands=commands,
            poller=SlurmCommands(
                dataclasses.replace(settings, unreachable_s=settings.command_timeout_s),
                env=self.config.slurm_env,
            ),
            hub=hub,
            store=self.registry.store,
            trainer_command=tuple(self.config.trainer_command),
            confinement=self.config.confinement,
            mounts=self.sandbox.mounts,
            allow_reporting=self.config.allow_reporting,
            trainer_env=dict(self.config.trainer_env),
            limits=self.config.run_limits,
        )

    def adoptable(self, job_id: str) -> bool:
        """True when the store records ``job_id`` as handed to a batch scheduler."""
        return self.registry.store.batch(job_id) is not None

    def adopt(self) -> list[str]:
        """Re-attach every open batch job the store records (call before the sweep);
        returns their ids."""
        if self.slurm is None:
            return []
        adopted = []
        for row in self.registry.store.open_jobs():
            record = self.registry.store.batch(row.job_id)
            if record is None:
                continue
            job = Job.from_row(row, self.registry.store, self.registry.config.history_limit)
            job.cursor = record.cursor
            if row.accepted.HasField("scheduler"):  # as last announced, until the first poll
                job.scheduler = scheduler_pb2.SchedulerJob()
                job.scheduler.CopyFrom(row.accepted.scheduler)
                job.scheduler.id = record.batch_id or job.scheduler.id
            self.registry.remember(job)
            run = SlurmRun(self.slurm, job, record)
            run.listen()
            job.control = run  # the job keeps its recorded state (queued, running, stopping)
            self.notice(
                f"job {job.job_id}: re-attached to Slurm job {record.batch_id or '(submitting)'}"
            )
            self._follow(job, run)
            adopted.append(job.job_id)
        return adopted

    async def close(self) -> None:
        """Local trainers are stopped (the caller cancelled their jobs first); batch
        jobs are left running in Slurm for the next worker life."""
        self._detach = True
        runs = list(self._runs.values())
        if self.slurm is not None:  # nothing to wait for: the batch jobs go on
            for task in runs:
                task.cancel()
        if runs:
            _, pending = await asyncio.wait(
                runs, timeout=self.config.shutdown_grace_s + self.config.run_limits.term_grace_s
            )
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if self.slurm is not None:
            await self.slurm.hub.close()
            self.slurm = None

    def detached(self, job: Job) -> bool:
        """True for a batch job that keeps running after this worker closes."""
        return self.batch and self.adoptable(job.job_id)

    # --- starting jobs ----------------------------------------------------------

    async def submit(
        self, job: Job, accepted: job_pb2.JobAccepted
    ) -> job_pb2.JobAccepted | job_pb2.JobRejected:
        """Start ``job``; returns the answer the client gets (Slurm: after sbatch)."""
        if self.slurm is None:
            self.start_local(job)
            return accepted
        try:
            run = self.slurm.prepare(job)
        except (OSError, ValueError) as exc:
            folder = self.slurm.relay_dir(job)
            if folder.is_dir():
                shutil.rmtree(folder, ignore_errors=True)
            return self._refused(job, None, "", f"could not prepare the batch job: {exc}")
        job.start(run, queued=True)  # a JobControl during sbatch reaches the run
        submit = asyncio.ensure_future(run.submit())
        done, _ = await asyncio.wait({submit}, timeout=SUBMIT_ANSWER_S)
        if submit in done:
            try:
                scheduler = submit.result()
            except SbatchRefused as exc:
                return self._refused(job, run, exc.option, exc.reason)
            except SlurmUnreachable as exc:
                return self._refused(job, run, "", str(exc), unreachable=True)
            accepted.scheduler.CopyFrom(scheduler)
            job.accepted.scheduler.CopyFrom(scheduler)
            job.scheduler = scheduler
            job.save()
            self.notice(f"job {job.job_id} queued in Slurm as job {run.batch_id}")
            self._follow(job, run)
            return accepted
        # sbatch still going (an unreachable controller): answer now, keep trying.
        scheduler = run.scheduler("SUBMITTING")
        scheduler.reason = "Slurm's controller has not answered yet; the worker keeps trying"
        accepted.scheduler.CopyFrom(scheduler)
        job.scheduler = scheduler
        self._runs[job.job_id] = asyncio.create_task(self._late_submit(job, run, submit))
        return accepted

    def _refused(
        self,
        job: Job,
        run: SlurmRun | None,
        option: str,
        reason: str,
        *,
        unreachable: bool = False,
    ) -> job_pb2.JobRejected:
        """Nothing was queued: the job is forgotten (a later submit may try again) and
        its folders removed."""
        job.control = None
        if run is not None:
            run.abandon()
            shutil.rmtree(run.folder, ignore_errors=True)
        with contextlib.suppress(OSError):
            job.run_dir.rmdir()  # reserved for this job, still empty
        self.registry.forget(job.job_id)
        field = f"slurm {option}".strip()
        words = "Slurm could not be reached" if unreachable else "Slurm refused the batch job"
        message = f"{words} ({field}): {reason}"
        self.notice(f"job {job.job_id} rejected: {message}")
        return job_pb2.JobRejected(
            job_id=job.job_id,
            message=f"job {job.job_id!r} rejected: {message}",
            violations=[
                job_pb2.FieldViolation(
                    field=field,
                    rule_id="worker.slurm.unreachable" if unreachable else "worker.slurm.sbatch",
                    code=job_pb2.VIOLATION_CODE_INVALID,
                    message=message,
                )
            ],
        )

    async def _late_submit(
        self, job: Job, run: SlurmRun, submit: asyncio.Future[scheduler_pb2.SchedulerJob]
    ) -> None:
        try:
            scheduler = await submit
        except (SbatchRefused, SlurmUnreachable) as exc:
            run.abandon()
            job.finish(
                RunResult(
                    completed=False,
                    failure_code=progress_pb2.FAILURE_CODE_INTERNAL,
                    message=f"the batch job could not be submitted to Slurm: {exc}",
                    scheduler=run.scheduler("UNKNOWN"),
                )
            )
            self._runs.pop(job.job_id, None)
            return
        del scheduler
        self.notice(f"job {job.job_id} queued in Slurm as job {run.batch_id}")
        self._runs.pop(job.job_id, None)
        self._follow(job, run)

    def start_local(self, job: Job) -> None:
        assert self.zmq is not None
        run = TrainerRun(
            self.config.trainer_command,
            job.plan,
            _JobSink(job),
            context=self.zmq,
            limits=self.config.run_limits,
            env=self.config.trainer_env,
            on_started=job.trainer_started,
            on_exited=job.trainer_exited,
            sandbox=self.sandbox,
        )
        job.start(run)
        self.notice(f"job {job.job_id} started: {' '.join(self.config.trainer_command)}")
        self._follow(job, run)

    def _follow(self, job: Job, run: Run) -> None:
        self._runs[job.job_id] = asyncio.create_task(self._run(job, run))

    async def _run(self, job: Job, run: Run) -> None:
        try:
            result = await run.run()
        except asyncio.CancelledError:
            if not (self._detach and isinstance(run, SlurmRun)):
                job.finish(
                    RunResult(
                        completed=False,
                        failure_code=progress_pb2.FAILURE_CODE_WORKER_SHUTDOWN,
                        message="the worker stopped while the job ran",
                        log_tail=run.log_tail,
                    )
                )
            raise
        except Exception as exc:
            log.exception("job %s: the run failed", job.job_id)
            result = RunResult(
                completed=False,
                failure_code=progress_pb2.FAILURE_CODE_INTERNAL,
                message=f"the worker failed to run the trainer: {type(exc).__name__}: {exc}",
            )
        finally:
            self._runs.pop(job.job_id, None)
        job.finish(result)
        if result.completed:
            how = "stopped early" if result.stopped_early else "finished"
            self.notice(
                f"job {job.job_id} {how} in {result.duration_s:.1f} s; outputs in {job.run_dir}"
            )
        else:
            self.notice(f"job {job.job_id} failed: {job.message}")


def _public_name(host: str) -> str:
    """The name compute nodes use for this host when ``listen`` binds every address."""
    if host in ("", "0.0.0.0", "::", "*"):
        import socket

        return socket.getfqdn()
    return host

