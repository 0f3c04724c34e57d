"""One accepted job's record: state, numbered progress history, replay and fan-out.

Every JobProgress, JobLog and the final JobComplete/JobFailed of a job share
one sequence (1, 2, ...). The history is bounded; train_begin is always kept
(SLEAP's LossViewer ignores everything without it) and so is the final
message. Listeners (one per attached connection) get each message as it is
emitted; :meth:`Job.replay` gives what a reconnecting client missed.

A job with a :class:`~sleap_rtc.worker.jobstore.JobStore` commits every state
change (and the sequence number of every message) to it before any listener
hears of it, so what a client was told is always on disk; :meth:`Job.from_row`
rebuilds an ended job after a restart (its final message is kept; the
progress history of an earlier worker life is not).
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from sleap_rtc.worker.jobstore import JobRow, JobStore, TrainerIdentity
from sleap_rtc.worker.trainplan import TrainPlan
from sleap_rtc.worker.zmqprogress import ProgressUpdate
from sleap_rtc_proto.v1 import job_pb2, progress_pb2, scheduler_pb2

V = job_pb2
#: A job's numbered messages.
JobMessage = (
    progress_pb2.JobProgress
    | progress_pb2.JobLog
    | progress_pb2.JobComplete
    | progress_pb2.JobFailed
)


@dataclass(frozen=True)
class RunResult:
    """How a run ended. ``failure_code`` is 0 for a completed run."""

    completed: bool
    failure_code: int = 0
    exit_code: int | None = None
    message: str = ""
    stopped_early: bool = False
    duration_s: float = 0.0
    log_tail: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    #: The batch job's final state in the scheduler (a batch backend's run).
    scheduler: scheduler_pb2.SchedulerJob | None = None


class RunControl(Protocol):
    """What a job needs of its running trainer (the process adapter provides it)."""

    def stop(self) -> None:
        """Ask the trainer to stop gracefully (it keeps its checkpoint)."""

    def cancel(self, code: int = ..., message: str = ...) -> None:
        """End the trainer at once; the run ends with ``code`` and ``message``."""


#: States in which a job counts against the concurrency limit.
ACTIVE_STATES = (V.JOB_STATE_QUEUED, V.JOB_STATE_RUNNING, V.JOB_STATE_STOPPING)


@dataclass
class Job:
    """An accepted job: its answer, plan, state and numbered history."""

    job_id: str
    spec_hash: str
    owner: str
    accepted: job_pb2.JobAccepted
    plan: TrainPlan
    history_limit: int = 10_000
    state: int = V.JOB_STATE_QUEUED
    message: str = ""
    last_sequence: int = 0
    final: progress_pb2.JobComplete | progress_pb2.JobFailed | None = None
    #: The running trainer, between :meth:`start` and :meth:`finish`.
    control: RunControl | None = None
    #: Where state changes are committed (None: memory only).
    store: JobStore | None = None
    #: The trainer process, once it started (recorded for the start-up sweep).
    trainer: TrainerIdentity | None = None
    #: Where a batch backend's scheduler has the job (None: the trainer runs here).
    scheduler: scheduler_pb2.SchedulerJob | None = None
    #: A batch job's relay position: committed with each message's sequence.
    cursor: int | None = None
    _first: progress_pb2.JobProgress | None = None
    _history: deque[JobMessage] = field(default_factory=deque)
    _dropped_upto: int = 0
    _listeners: list[Callable[[JobMessage], None]] = field(default_factory=list)

    @property
    def run_dir(self) -> Path:
        return self.plan.run_dir

    @property
    def config_file(self) -> Path:
        return self.plan.config_file

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_STATES

    # --- persistence -----------------------------------------------------

    def save(self) -> None:
        """Commit this job's row (a state change) to the store, if it has one."""
        if self.store is not None:
            self.store.save(
                job_id=self.job_id,
                owner=self.owner,
                spec_hash=self.spec_hash,
                state=self.state,
                message=self.message,
                accepted=self.accepted,
                plan=self.plan,
                trainer=self.trainer,
                last_sequence=self.last_sequence,
                final=self.final,
            )

    def trainer_started(self, trainer: TrainerIdentity) -> None:
        """The trainer process exists: record who it is before anything else happens."""
        self.trainer = trainer
        self.save()

    def trainer_exited(self, returncode: int | None) -> None:
        """The trainer ended; the result is not recorded yet ("finishing")."""
        if self.final is None:
            self.message = f"finishing: the trainer exited with status {returncode}"
            self.save()

    @classmethod
    def from_row(cls, row: JobRow, store: JobStore | None, history_limit: int = 10_000) -> Job:
        """The job as a store row describes it (after a worker restart)."""
        job = cls(
            job_id=row.job_id,
            spec_hash=row.spec_hash,
            owner=row.owner,
            accepted=row.accepted,
            plan=row.plan,
            history_limit=history_limit,
            state=row.state,
            message=row.message,
            last_sequence=row.last_sequence,
            final=row.final,
            store=store,
            trainer=row.trainer,
        )
        # The progress history of the earlier worker life is not kept.
        job._dropped_upto = row.last_sequence
        if row.final is not None:
            job._history.append(row.final)
            job._dropped_upto = row.final.sequence - 1
        return job

    # --- numbering and fan-out -------------------------------------------

    def _emit(self, message: JobMessage) -> None:
        if self.store is not None and message is not self.final:
            self.store.set_sequence(self.job_id, message.sequence, self.cursor)
        self._history.append(message)
        while len(self._history) > self.history_limit:
            dropped = self._history.popleft()
            self._dropped_upto = dropped.sequence
        for listener in list(self._listeners):
            try:
                listener(message)
            except Exception:  # one broken connection must not break the job
                self._listeners.remove(listener)

    def _next(self) -> int:
        self.last_sequence += 1
        return self.last_sequence

    def emit_progress(self, update: ProgressUpdate) -> None:
        if self.final is not None:
            return
        message = update.to_proto(self.job_id, self._next())
        if update.event == progress_pb2.PROGRESS_EVENT_TRAIN_BEGIN and self._first is None:
            self._first = message  # LossViewer needs train_begin: never dropped
        self._emit(message)

    def emit_log(self, stream: int, lines: list[str]) -> None:
        if self.final is not None or not lines:
            return
        self._emit(
            progress_pb2.JobLog(
                job_id=self.job_id,
                sequence=self._next(),
                stream=stream,  # type: ignore[arg-type]
                lines=lines,
            )
        )

    def scheduler_changed(
        self, scheduler: scheduler_pb2.SchedulerJob, line: str, *, running: bool = False
    ) -> None:
        """The batch scheduler reports a new state: one worker JobLog line with
        ``scheduler`` set; ``running`` moves a queued job to RUNNING (committed first)."""
        self.scheduler = scheduler
        if running and self.state == V.JOB_STATE_QUEUED:
            self.state = V.JOB_STATE_RUNNING
            self.message = "running"
            self.save()
        if self.final is not None:
            return
        log = progress_pb2.JobLog(
            job_id=self.job_id,
            sequence=self._next(),
            stream=progress_pb2.LOG_STREAM_WORKER,
            lines=[line],
        )
        log.scheduler.CopyFrom(scheduler)
        self._emit(log)

    # --- lifecycle: start, stop, cancel, finish ---------------------------

    def start(self, control: RunControl, *, queued: bool = False) -> None:
        """The trainer of this job started (``queued``: handed to a scheduler that has
        not started it yet); ``control`` stops or cancels it."""
        self.control = control
        if queued:
            self.message = "queued"
        else:
            self.state = V.JOB_STATE_RUNNING
            self.message = "running"
        self.save()

    def stop(self) -> str:
        """Ask the trainer to stop after the current batch; returns the note for the client."""
        if self.control is not None:
            self.control.stop()
        self.state = V.JOB_STATE_STOPPING
        self.message = "stop requested; training ends after the current batch"
        self.save()
        return self.message

    def cancel(
        self,
        code: int = progress_pb2.FAILURE_CODE_CANCELLED,
        message: str = "job cancelled by the client",
    ) -> str:
        """Terminate the trainer; the job fails with ``code``. Returns the note for the client."""
        if self.control is not None:
            self.control.cancel(code, message)
        self.state = V.JOB_STATE_STOPPING
        self.message = "cancel requested; the trainer is being terminated"
        self.save()
        return self.message

    def finish(self, result: RunResult) -> JobMessage:
        """Record the end of the run (once); returns the final message."""
        if self.final is not None:
            return self.final
        final: progress_pb2.JobComplete | progress_pb2.JobFailed
        if result.completed:
            final = progress_pb2.JobComplete(
                job_id=self.job_id,
                sequence=self._next(),
                run_dir=str(self.run_dir),
                outputs=list(result.outputs),
                duration_seconds=result.duration_s,
                stopped_early=result.stopped_early,
            )
            self.state = V.JOB_STATE_COMPLETED
            self.message = "stopped early" if result.stopped_early else "completed"
        else:
            final = progress_pb2.JobFailed(
                job_id=self.job_id,
                sequence=self._next(),
                code=result.failure_code or progress_pb2.FAILURE_CODE_INTERNAL,  # type: ignore[arg-type]
                message=result.message or "the job failed",
                log_tail=list(result.log_tail),
                duration_seconds=result.duration_s,
            )
            if result.exit_code is not None:
                final.exit_code = result.exit_code
            self.state = V.JOB_STATE_FAILED
            self.message = final.message
        if result.scheduler is not None:
            self.scheduler = result.scheduler
            final.scheduler.CopyFrom(result.scheduler)
        self.final = final
        self.control = None
        self.save()  # committed before any client hears of it
        with contextlib.suppress(FileNotFoundError):
            self.config_file.unlink()
        self._emit(final)
        return final

    def subscribe(self, listener: Callable[[JobMessage], None]) -> Callable[[], None]:
        """Call ``listener`` with every later message; returns the unsubscribe function."""
        self._listeners.append(listener)

        def unsubscribe() -> None:
            with contextlib.suppress(ValueError):
                self._listeners.remove(listener)

        return unsubscribe

    def replay(self, after_sequence: int = 0) -> tuple[list[JobMessage], int]:
        """Kept messages with a sequence above ``after_sequence``, and how many in that
        range the bounded history dropped (train_begin is always kept)."""
        out: list[JobMessage] = []
        dropped = max(0, self._dropped_upto - after_sequence)
        pinned = self._first
        if pinned is not None and after_sequence < pinned.sequence <= self._dropped_upto:
            out.append(pinned)
            dropped -= 1
        out.extend(m for m in self._history if m.sequence > after_sequence)
        return out, dropped

    def status(self, message: str = "") -> job_pb2.JobStatus:
        status = job_pb2.JobStatus(
            job_id=self.job_id,
            state=self.state,  # type: ignore[arg-type]
            last_sequence=self.last_sequence,
            run_dir=str(self.run_dir),
            message=message or self.message,
        )
        if self.scheduler is not None:
            status.scheduler.CopyFrom(self.scheduler)
        return status
