"""Runs one job's trainer as a Slurm batch job (``[trainer] backend = "slurm"``).

The worker writes the job's *relay folder* (beside the run folder, not in it:
the trainer may write its run folder) holding the relay's spec with a fresh
CURVE key pair, the job's canonical config, the batch script and Slurm's log;
submits the script with ``sbatch --parsable``; and records Slurm's job id in
the job store before anything else happens. On the compute node the batch
script ``exec``s the relay (:mod:`.relay`), which runs the confined trainer
exactly as the local backend does and sends progress, output and the result
back to the worker's :class:`~.relayhub.RelayHub`.

:class:`SlurmRun` is the job's :class:`~.jobrecord.RunControl`: it follows
Slurm's state off the progress path (``squeue``/``scontrol`` every
``poll_s``, with timeouts), turns each change into a worker JobLog line with
``scheduler`` set, stops early over the relay (``scancel --batch
--signal=INT`` when no relay is connected), cancels with ``scancel``, and
ends with a :class:`~.jobrecord.RunResult` that carries Slurm's final state
and exit code. A restarted worker builds one with :meth:`SlurmBackend.adopt`
from the job store's :class:`~.jobstore.BatchRecord`: nothing is submitted
again; the relay reconnects by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import shutil
import sys
import time
from collections import deque
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sleap_rtc.config.worker import SlurmSettings
from sleap_rtc.worker.jobrecord import Job, RunResult
from sleap_rtc.worker.jobstore import BatchRecord, JobStore
from sleap_rtc.worker.relayhub import RelayHub
from sleap_rtc.worker.relaywire import (
    ABANDONED_FILE,
    SECRET_ENV,
    Hello,
    Log,
    Progress,
    RelayMessage,
    RelaySpec,
    RelaySpecError,
    Result,
    read_result,
    write_spec,
)
from sleap_rtc.worker.slurmbatch import job_name_for, render_batch_script, write_batch_script
from sleap_rtc.worker.slurmctl import (
    SlurmCommands,
    SlurmError,
    SlurmJobInfo,
    SlurmUnreachable,
)
from sleap_rtc.worker.trainer import RunLimits
from sleap_rtc_proto.v1 import progress_pb2, scheduler_pb2

__all__ = ["RELAY_FOLDER", "SlurmBackend", "SlurmRun"]

log = logging.getLogger(__name__)

#: The folder (in the runs folder) holding each job's relay folder.
RELAY_FOLDER = ".sleap-rtc-relay"
SYSTEM = "slurm"
LOG_FILE = "slurm.log"
SCRIPT_FILE = "job.sbatch"
#: How long Slurm's end state may lag the relay's Result: after a slurmctld restart,
#: Slurm shows a job's end ~12 s after it returns (REFERENCE.md).
END_GRACE_S = 30.0
#: How often Slurm is asked while a job is ending (faster than ``poll_s``).
ENDING_POLL_S = 0.5


@dataclass
class SlurmBackend:
    """What every Slurm run of this worker shares."""

    settings: SlurmSettings
    #: For submissions and signals: retried while the controller is unreachable.
    commands: SlurmCommands
    #: For the state polls: one try each (the next poll is the retry).
    poller: SlurmCommands
    hub: RelayHub
    store: JobStore
    trainer_command: tuple[str, ...]
    confinement: str
    mounts: tuple[str, ...]
    allow_reporting: bool = False
    trainer_env: Mapping[str, str] = field(default_factory=dict)
    limits: RunLimits = field(default_factory=RunLimits)

    @property
    def python(self) -> str:
        """The compute nodes' Python (``[slurm] python``; default: the worker's own)."""
        return self.settings.python or sys.executable

    def relay_dir(self, job: Job) -> Path:
        return job.plan.ckpt_dir / RELAY_FOLDER / job.plan.run_name

    def prepare(self, job: Job) -> SlurmRun:
        """A new run: the relay folder, its spec (with fresh keys) and the batch script,
        and the batch record -- all before anything is submitted.

        Raises:
            OSError: the relay folder cannot be written.
            ValueError: a ``[slurm]`` setting cannot go into a batch script.
        """
        folder = self.relay_dir(job)
        folder.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        folder.mkdir(mode=0o700)
        config = folder / "config.yaml"
        fd = os.open(config, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as out, open(job.config_file, "rb") as src:
            shutil.copyfileobj(src, out)
        public, secret = self.hub.new_keys()
        spec = RelaySpec(
            job_id=job.job_id,
            endpoint=self.hub.endpoint,
            server_key=self.hub.server_key,
            client_public=public,
            # Not in the folder: it lies in the mounts, which every trainer may read,
            # for as long as the job waits in Slurm's queue. The key travels in the
            # batch job's environment (sbatch's, then Slurm's state), which the relay
            # takes and drops before the trainer starts.
            client_secret="",
            trainer_command=self.trainer_command,
            plan=dataclasses.replace(job.plan, config_file=config),
            confinement=self.confinement,
            mounts=self.mounts,
            allow_reporting=self.allow_reporting,
            trainer_env=dict(self.trainer_env),
            limits=self.limits,
        )
        write_spec(folder, spec)
        script = render_batch_script(  # with --no-requeue: a job runs once
            self.settings,
            job_name=job_name_for(job.job_id),
            run_dir=job.plan.run_dir,
            log_file=folder / LOG_FILE,
            relay_argv=[self.python, "-m", "sleap_rtc.worker.relay", str(folder)],
            export=(SECRET_ENV,),
        )
        write_batch_script(folder / SCRIPT_FILE, script)
        record = BatchRecord(job.job_id, SYSTEM, "", str(folder), public)
        self.store.save_batch(record)
        return SlurmRun(self, job, record, secret=secret)


class SlurmRun:
    """One job's batch job, followed from submission to its end (asyncio adapter).

    Built by :meth:`SlurmBackend.prepare` for a new job, or directly from the job
    store's :class:`~.jobstore.BatchRecord` for a job an earlier worker life
    submitted (nothing is submitted again)."""

    def __init__(
        self,
        backend: SlurmBackend,
        job: Job,
        record: BatchRecord,
        *,
        secret: str = "",
    ) -> None:
        self.backend = backend
        self._secret = secret  # the relay's key, until sbatch has it
        self.job = job
        self.record = record
        self.folder = Path(record.relay_dir)
        self.batch_id = record.batch_id
        self._end_request: tuple[int, str] | None = None
        self._info: SlurmJobInfo | None = None
        self._announced: tuple[str, str, str] | None = None
        self._relay_result: RunResult | None = None
        self._relay_seen = False
        self._tail: deque[str] = deque(maxlen=backend.limits.log_tail_lines)
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._unreachable = False
        self._listening = False

    # --- the relay's messages ---------------------------------------------------

    def listen(self) -> None:
        """Take the relay's messages for this job (from ``record.cursor`` on)."""
        if not self._listening:
            self.backend.hub.register(
                self.job.job_id,
                self.record.client_public,
                self._on_message,
                after_seq=self.record.cursor,
            )
            self._listening = True

    def _on_message(self, message: RelayMessage) -> None:
        self.job.cursor = message.seq  # committed with the message's sequence
        if isinstance(message, Hello):
            self._relay_seen = True
        elif isinstance(message, Progress):
            self.job.emit_progress(message.update)
        elif isinstance(message, Log):
            self._tail.extend(message.lines)
            self.job.emit_log(message.stream, list(message.lines))
        elif isinstance(message, Result):
            self._relay_result = message.result
            self._wake.set()

    # --- submission -------------------------------------------------------------

    async def submit(self) -> scheduler_pb2.SchedulerJob:
        """``sbatch`` the job and record Slurm's id; returns the scheduler state to
        announce (PENDING).

        Raises:
            SbatchRefused: sbatch said no; nothing was queued.
            SlurmUnreachable: the controller did not answer within ``unreachable_s``.
        """
        self.listen()
        try:
            batch_id = await self.backend.commands.submit(
                self.folder / SCRIPT_FILE,
                job_name=job_name_for(self.job.job_id),
                cwd=self.folder,
                env={SECRET_ENV: self._secret},
            )
        finally:
            self._secret = ""
        self.batch_id = batch_id
        self.record = dataclasses.replace(self.record, batch_id=batch_id)
        self.backend.store.save_batch(self.record)
        if self._end_request is not None:  # cancelled while sbatch ran
            self._spawn(self._scancel())
        return self.scheduler("PENDING")

    def abandon(self) -> None:
        """This batch job must never run: mark the relay folder and stop listening."""
        with contextlib.suppress(OSError):
            (self.folder / ABANDONED_FILE).touch()
        self.backend.hub.unregister(self.job.job_id)
        self._listening = False

    def scheduler(self, state: str, info: SlurmJobInfo | None = None) -> scheduler_pb2.SchedulerJob:
        out = scheduler_pb2.SchedulerJob(system=SYSTEM, id=self.batch_id, state=state)
        if info is not None:
            out.reason = info.reason
            out.node = info.node
            if info.exit_code is not None:
                out.exit_code = info.exit_code
            if info.signal is not None:
                out.signal = info.signal
        return out

    # --- control ----------------------------------------------------------------

    @property
    def log_tail(self) -> tuple[str, ...]:
        return tuple(self._tail)

    def _queued(self) -> bool:
        return self._info is None or self._info.state == "PENDING"

    def stop(self) -> None:
        """Stop early: over the relay (the trainer keeps its checkpoint); by
        ``scancel --batch --signal=INT`` when no relay is connected; a job still
        queued in Slurm is cancelled (nothing was trained)."""
        if self._queued() and not self._relay_seen:
            self.cancel(
                progress_pb2.FAILURE_CODE_CANCELLED,
                "stopped while queued in Slurm; nothing was trained",
            )
            return
        if not self.backend.hub.send(self.job.job_id, "stop") and self.batch_id:
            self._spawn(self._scancel(signal="INT", batch=True))

    def cancel(
        self,
        code: int = progress_pb2.FAILURE_CODE_CANCELLED,
        message: str = "job cancelled by the client",
    ) -> None:
        """End the batch job at once: ``scancel`` (the relay, which is the batch script,
        hears SIGTERM and ends the trainer; Slurm says CANCELLED). Before sbatch
        answered, :meth:`submit` cancels as soon as it has the id."""
        if self._end_request is None:
            self._end_request = (code, message)
        if self.batch_id:
            self._spawn(self._scancel())
        self._wake.set()

    async def _scancel(self, *, signal: str | None = None, batch: bool = False) -> None:
        try:
            await self.backend.commands.cancel(self.batch_id, signal=signal, batch=batch)
        except SlurmError as exc:
            self._worker_line(f"could not signal Slurm job {self.batch_id}: {exc}")

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _worker_line(self, line: str) -> None:
        self._tail.append(line)
        self.job.emit_log(progress_pb2.LOG_STREAM_WORKER, [line])

    # --- following Slurm --------------------------------------------------------

    async def run(self) -> RunResult:
        """Follow the batch job to its end and say how it ended. Never raises for
        Slurm's or the trainer's misbehaviour; cancelling the task leaves the batch
        job to run (a restarted worker re-attaches)."""
        started = time.monotonic()
        self.listen()
        try:
            if not self.batch_id:
                found = await self._find_submitted()
                if found is None:
                    self.abandon()
                    return RunResult(
                        completed=False,
                        failure_code=progress_pb2.FAILURE_CODE_WORKER_SHUTDOWN,
                        message="the worker stopped while submitting this job to Slurm and "
                        "Slurm has no such job; nothing ran",
                        duration_s=time.monotonic() - started,
                    )
            info = await self._follow()
            return self._result(info, started)
        finally:
            for task in list(self._tasks):
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await asyncio.wait_for(task, timeout=self.backend.settings.command_timeout_s)
            self.backend.hub.unregister(self.job.job_id)
            self._listening = False

    def _read_result(self) -> RunResult | None:
        """The result the relay left in its folder (None: none, or unreadable -- said)."""
        try:
            return read_result(self.folder)
        except RelaySpecError as exc:
            self._worker_line(f"the relay's result file cannot be read: {exc}")
            return None

    def _ended_in_slurm(self) -> bool:
        return self._info is not None and self._info.terminal

    async def _find_submitted(self) -> str | None:
        """A worker that died during sbatch: did the job reach Slurm?"""
        try:
            jobs = await self.backend.commands.find(job_name_for(self.job.job_id))
        except SlurmError as exc:
            log.warning("job %s: cannot ask Slurm for its batch job: %s", self.job.job_id, exc)
            jobs = []
        if not jobs:
            return None
        live = [j for j in jobs if not j.terminal]
        self.batch_id = (live or jobs)[-1].job_id  # the newest, a live one if any
        self.record = dataclasses.replace(self.record, batch_id=self.batch_id)
        self.backend.store.save_batch(self.record)
        return self.batch_id

    async def _query(self) -> SlurmJobInfo | bool | None:
        """Slurm's view (None: it forgot the job; False: it did not answer)."""
        try:
            info = await self.backend.poller.query(self.batch_id)
        except SlurmUnreachable as exc:
            if not self._unreachable:
                self._unreachable = True
                self._worker_line(
                    f"Slurm's controller is not answering ({exc}); a running job goes on, "
                    "and the worker keeps asking"
                )
            return False
        except SlurmError as exc:
            log.warning("job %s: Slurm query failed: %s", self.job.job_id, exc)
            return False
        if self._unreachable:
            self._unreachable = False
            self._worker_line("Slurm's controller answers again")
        return info

    async def _follow(self) -> SlurmJobInfo | None:
        """Poll until the job ended in Slurm (the relay's result is then in, or on disk,
        or never coming), or the relay's result is in and Slurm did not say the end
        within :data:`END_GRACE_S`. Returns Slurm's last view (None: Slurm forgot the
        job; the relay folder tells)."""
        ending_since: float | None = None
        while True:
            info = await self._query()
            if info is None:
                if self._relay_result is None:
                    self._relay_result = self._read_result()
                self._info = None
                return None
            if isinstance(info, SlurmJobInfo):
                self._info = info
                self._announce(info)
            if self._ended_in_slurm():
                # The batch script (the relay, by exec) is gone, and the relay writes its
                # result file before it sends it: what is not on disk now never comes.
                if self._relay_result is None:
                    self._relay_result = self._read_result()
                return self._info
            if self._relay_result is not None:  # Slurm has yet to say the job ended
                ending_since = ending_since or time.monotonic()
                if time.monotonic() - ending_since > END_GRACE_S:
                    return self._info
                delay = ENDING_POLL_S
            else:
                delay = self.backend.settings.poll_s
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=delay)

    def _announce(self, info: SlurmJobInfo) -> None:
        key = (info.state, info.reason if info.state == "PENDING" else "", info.node)
        if key == self._announced or info.terminal:
            return
        self._announced = key
        if info.state == "PENDING":
            why = f" ({info.reason})" if info.reason and info.reason != "None" else ""
            line = f"queued in Slurm as job {self.batch_id}: waiting{why}"
            self.job.scheduler_changed(self.scheduler("PENDING", info), line)
        else:
            where = f" on {info.node}" if info.node else ""
            line = f"Slurm job {self.batch_id} {info.state.lower()}{where}"
            self.job.scheduler_changed(
                self.scheduler(info.state, info), line, running=info.state == "RUNNING"
            )

    # --- the end ----------------------------------------------------------------

    def _slurm_log_tail(self) -> tuple[str, ...]:
        try:
            with open(self.folder / LOG_FILE, "rb") as fh:
                fh.seek(0, os.SEEK_END)
                fh.seek(max(0, fh.tell() - 16384))
                text = fh.read().decode("utf-8", "replace")
        except OSError:
            return ()
        return tuple(text.splitlines()[-self.backend.limits.log_tail_lines :])

    def _result(self, info: SlurmJobInfo | None, started: float) -> RunResult:
        state = info.state if info is not None else "UNKNOWN"
        scheduler = self.scheduler(state, info)
        duration = time.monotonic() - started
        relay = self._relay_result
        words = f"Slurm job {self.batch_id} ended {state}" + (
            f" with exit code {info.exit_code}" if info is not None and info.exit_code else ""
        )
        self._worker_line(words)
        if relay is not None:
            result = dataclasses.replace(relay, scheduler=scheduler)
            if not result.completed and self._end_request is not None:
                code, message = self._end_request
                result = dataclasses.replace(result, failure_code=code, message=message)
            elif not result.completed and state == "TIMEOUT":
                limit = self.backend.settings.time_limit or "the partition's limit"
                result = dataclasses.replace(
                    result,
                    failure_code=progress_pb2.FAILURE_CODE_TIMEOUT,
                    message=f"Slurm ended the job at its time limit ({limit}); "
                    f"{result.message}",
                )
            elif not result.completed and state == "OUT_OF_MEMORY":
                result = dataclasses.replace(
                    result, message=f"Slurm ended the job: out of memory; {result.message}"
                )
            return result  # the relay listed the outputs (the same shared run folder)
        tail = self._slurm_log_tail() or self.log_tail
        exit_code = info.exit_code if info is not None else None
        if self._end_request is not None and state in ("CANCELLED", "PENDING", "UNKNOWN"):
            code, message = self._end_request
            return RunResult(
                completed=False,
                failure_code=code,
                exit_code=exit_code,
                message=message,
                duration_s=duration,
                log_tail=tail,
                scheduler=scheduler,
            )
        code, message = _failure_for(state, self.batch_id, info)
        return RunResult(
            completed=False,
            failure_code=code,
            exit_code=exit_code,
            message=message + (f"; last output: {tail[-1]}" if tail else ""),
            duration_s=duration,
            log_tail=tail,
            scheduler=scheduler,
        )


def _failure_for(state: str, batch_id: str, info: SlurmJobInfo | None) -> tuple[int, str]:
    """How a batch job that left no relay result ended, in the protocol's words."""
    f = progress_pb2
    if state == "TIMEOUT":
        return f.FAILURE_CODE_TIMEOUT, f"Slurm ended job {batch_id} at its time limit"
    if state in ("CANCELLED", "PREEMPTED", "DEADLINE"):
        return (
            f.FAILURE_CODE_CANCELLED,
            f"Slurm job {batch_id} was {state.lower()} in Slurm, not by this worker",
        )
    if state in ("NODE_FAIL", "BOOT_FAIL"):
        return f.FAILURE_CODE_TRAINER_EXITED, f"Slurm job {batch_id}: the node failed ({state})"
    if state == "OUT_OF_MEMORY":
        return f.FAILURE_CODE_TRAINER_EXITED, f"Slurm job {batch_id} ran out of memory"
    if state == "UNKNOWN":
        return (
            f.FAILURE_CODE_TRAINER_EXITED,
            f"Slurm no longer knows job {batch_id} and its relay left no result",
        )
    status = f" with exit code {info.exit_code}" if info is not None and info.exit_code else ""
    return (
        f.FAILURE_CODE_TRAINER_EXITED,
        f"Slurm job {batch_id} ended {state}{status} before its relay reported a result",
    )
