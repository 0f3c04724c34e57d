"""The worker's service: one :class:`WorkerService`, one ``serve(link)`` per connection.

Not a thin adapter: besides the asyncio wiring it holds the request handlers
(one per request body, :attr:`WorkerService._handlers`) and the policy that
needs worker state (job ownership, path checks in flight). It feeds each link to a
:class:`~sleap_rtc.worker.connection.Connection` (which pumps frames through a
:class:`~sleap_rtc.worker.session.WorkerSession`), path checks into a thread
(:class:`~sleap_rtc.worker.pathcheck.PathChecker`), submits into the
:class:`~sleap_rtc.worker.jobs.JobRegistry`, accepted jobs into a
:class:`~sleap_rtc.worker.trainer.TrainerRun`, and each job's numbered
progress to every connection attached to it. Jobs outlive connections: a
closed link ends ``serve()`` and leaves the jobs running; a new connection
gets the rest with ``JobAttach``. ``start()`` builds the file index of the
mounts in a thread, so the first path check does not pay for the walk.

>>> import asyncio, tempfile
>>> from pathlib import Path
>>> async def demo():
...     root = Path(tempfile.mkdtemp())
...     (root / "mnt").mkdir()
...     service = WorkerService(WorkerConfig(
...         mounts=[root / "mnt"], state_dir=root / "state", verifier=None))
...     await service.start()
...     await service.close()
...     return service.runs_dir.name
>>> asyncio.run(demo())
'sleap-rtc-runs'
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import importlib.metadata
import logging
import secrets
import shutil
import threading
import uuid
from collections.abc import Callable
from pathlib import Path

import zmq.asyncio
from google.protobuf.message import Message

from sleap_rtc import __version__
from sleap_rtc.transport.link import Link
from sleap_rtc.worker.browse import list_directory
from sleap_rtc.worker.confine import probe as probe_confinement
from sleap_rtc.worker.connection import Connection
from sleap_rtc.worker.events import (
    ClientAccepted,
    ClientViolation,
    Event,
    RequestReceived,
    make_error,
)
from sleap_rtc.worker.index import FileIndex
from sleap_rtc.worker.intakecheck import IntakeRecheck
from sleap_rtc.worker.jobrecord import Job, RunResult
from sleap_rtc.worker.jobrunner import JobRunner
from sleap_rtc.worker.jobs import IntakeConfig, JobRegistry
from sleap_rtc.worker.launcher import ConfinementRequired, LaunchPolicy, Mode
from sleap_rtc.worker.mounts import MountPolicy, PathRejected
from sleap_rtc.worker.orphans import StateLock
from sleap_rtc.worker.pathcheck import PathChecker
from sleap_rtc.worker.recovery import sweep
from sleap_rtc.worker.serviceconfig import WorkerConfig, session_verifier
from sleap_rtc.worker.session import WorkerInfo, WorkerSession
from sleap_rtc_proto.stream import ByteBudget
from sleap_rtc_proto.v1 import error_pb2, job_pb2, paths_pb2, progress_pb2

log = logging.getLogger(__name__)


def _components() -> dict[str, str]:
    out = {"sleap-rtc": __version__}
    for name in ("sleap-nn", "sleap-io"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            out[name] = importlib.metadata.version(name)
    return out


class WorkerService:
    """The worker: serves connections, checks paths, accepts and runs jobs."""

    def __init__(self, config: WorkerConfig) -> None:
        if config.max_concurrent_jobs < 1:
            raise ValueError("max_concurrent_jobs must be at least 1")
        if not config.trainer_command:
            raise ValueError("trainer_command must name a program")
        self.config = config
        self.policy = MountPolicy(config.mounts)
        runs = config.runs_dir or self.policy.roots[0] / "sleap-rtc-runs"
        self.runs_dir = Path(runs)
        self.info = WorkerInfo(
            worker_id=config.worker_id,
            software=f"sleap-rtc {__version__}",
            components=_components(),
            mounts=[str(r) for r in self.policy.roots] if config.disclose_mounts else [],
            max_frame_bytes=config.max_frame_bytes,
            max_message_bytes=config.max_message_bytes,
            max_config_bytes=config.max_config_bytes,
            max_concurrent_jobs=config.max_concurrent_jobs,
        )
        self.index = FileIndex(self.policy) if config.build_index else None
        self.checker = PathChecker(
            self.policy,
            self.index,
            token_secret=config.token_secret or secrets.token_bytes(32),
            disclose_mounts=config.disclose_mounts,
        )
        self.registry = JobRegistry(
            IntakeConfig(
                policy=self.policy,
                state_dir=Path(config.state_dir),
                runs_dir=self.runs_dir,
                trainer_command=tuple(config.trainer_command),
                max_concurrent_jobs=config.max_concurrent_jobs,
                max_config_bytes=config.max_config_bytes,
                require_check_token=config.require_check_token,
                token_check=self.checker.verify_check_token,
                recheck=IntakeRecheck(self.checker),
                allow_reporting=config.allow_reporting,
                history_limit=config.history_limit,
                retention_s=config.job_retention_s,
            )
        )
        self._state_lock = StateLock(Path(config.state_dir))
        self._preauth_budget = ByteBudget(config.max_preauth_bytes)
        self.confinement = probe_confinement()
        mode = Mode(config.confinement)
        if mode is Mode.REQUIRE and not self.confinement.network:
            raise ConfinementRequired(
                "the operator requires confinement ([trainer] confinement = \"require\") "
                f"but {self.confinement.describe()}"
                + ("" if not self.confinement.available else ": no TCP rules (ABI < 4)")
            )
        self.sandbox = LaunchPolicy(
            mode=mode,
            availability=self.confinement,
            temp_root=Path(config.state_dir) / "trainer-tmp",
            mounts=tuple(str(r) for r in self.policy.roots),
            allow_reporting=config.allow_reporting,
            extra_env=dict(config.trainer_env),
        )
        self._zmq: zmq.asyncio.Context | None = None
        self.runner = JobRunner(config, self.registry, self.sandbox, lambda t: self._notice(t))
        self._connections: set[Connection] = set()
        self._index_stop = threading.Event()
        self._index_task: asyncio.Task[None] | None = None
        self.started = False
        #: Where the one-line per-job notices go (accepted, started, finished,
        #: failed); the runtime points it at the worker's output. None: logged at INFO.
        self.announce: Callable[[str], None] | None = None

    def confinement_summary(self) -> str:
        """One line on how trainers are confined here (start-up message, ``workers``)."""
        if self.sandbox.mode is Mode.OFF:
            return "off (operator setting); trainers run unconfined"
        if not self.confinement.available:
            return f"NOT confined: {self.confinement.describe()}"
        gaps = "" if self.confinement.network else "; no TCP rules at this ABI"
        return f"{self.confinement.describe()}{gaps}"

    # --- lifecycle -----------------------------------------------------------

    async def start(self) -> None:
        """Prepare folders, remove temp configs a crashed worker left, check runs_dir,
        and start building the file index in a thread (start() does not wait for it;
        the first path check does, if it comes before the walk ends).

        Before anything is served, the jobs an earlier worker life left open in the
        job store end with the true reason (:func:`~.recovery.sweep`): a trainer
        still running unsupervised is stopped first. Raises
        :class:`~.orphans.StateLocked` when another worker uses the state folder."""
        first = self._state_lock.acquire()
        self._zmq = zmq.asyncio.Context()
        try:
            await self.runner.start(self._zmq)  # the Slurm relay endpoint, before adopting
        except BaseException:
            self._zmq.destroy(linger=0)
            self._zmq = None
            self._state_lock.release()
            raise
        if first:  # the first service of this process on the folder
            adopted = self.runner.adopt()  # batch jobs still in Slurm: followed again
            await asyncio.to_thread(
                sweep,
                self.registry,
                grace_s=self.config.run_limits.term_grace_s,
                skip=frozenset(adopted),
            )
            # No local trainer runs now (the sweep ended every open job): temps are stale.
            if self.sandbox.temp_root.is_dir():
                for leftover in self.sandbox.temp_root.iterdir():
                    shutil.rmtree(leftover, ignore_errors=True)
        removed = self.registry.prepare() if first else []
        if removed:
            log.info("removed %d stale temp config(s) from %s", len(removed), removed[0].parent)
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        try:
            self.runs_dir = self.policy.resolve(self.runs_dir)
        except PathRejected as exc:
            raise ValueError(f"runs_dir {self.runs_dir} must lie inside a mount: {exc}") from None
        self.registry.config = dataclasses.replace(self.registry.config, runs_dir=self.runs_dir)
        if self.index is not None and not self.index.built:
            self._index_stop.clear()
            self._index_task = asyncio.create_task(self._build_index(self.index))
        self.started = True

    async def _build_index(self, index: FileIndex) -> None:
        """Walk the mounts once in a thread so the first path check finds the index warm."""
        try:
            built = await asyncio.to_thread(index.refresh, stop=self._index_stop)
        except Exception:
            log.exception("building the file index failed; path checks will retry it")
            return
        if built:
            log.info(
                "indexed %d file(s) under the mounts in %.2f s%s",
                index.file_count,
                index.last_build_s,
                " (truncated at the file limit)" if index.truncated else "",
            )

    async def close(self) -> None:
        """Stop every running job (JobFailed WORKER_SHUTDOWN), close connections, clean up."""
        self._index_stop.set()  # a start-up walk still running gives up at its next folder
        if self._index_task is not None:
            self._index_task.cancel()
            await asyncio.wait({self._index_task}, timeout=5.0)
            self._index_task = None
        for job in self.registry.jobs():
            if job.active and job.control is not None and not self.runner.detached(job):
                job.cancel(progress_pb2.FAILURE_CODE_WORKER_SHUTDOWN, "the worker is shutting down")
        await self.runner.close()  # batch jobs stay in Slurm for the next worker life
        for conn in list(self._connections):
            conn.kill()
        for job in self.registry.jobs():  # anything that never got a result
            if job.final is None and not self.runner.detached(job):
                job.finish(
                    RunResult(
                        completed=False,
                        failure_code=progress_pb2.FAILURE_CODE_WORKER_SHUTDOWN,
                        message="the worker is shutting down",
                    )
                )
        self.registry.prepare()  # no temp config outlives the worker
        if self._zmq is not None:
            self._zmq.destroy(linger=0)
            self._zmq = None
        self._state_lock.release()
        self.started = False

    # --- one connection --------------------------------------------------------

    async def serve(self, link: Link, *, peer_id: str = "") -> None:
        """Handle one connection until its link closes. Jobs keep running afterwards."""
        if not self.started:
            raise RuntimeError("call start() before serve()")
        cfg = self.config
        conn = Connection(
            link,
            peer_id,
            WorkerSession(
                self.info,
                verifier=None if cfg.verifier is None else session_verifier(cfg.verifier),
                session_id=uuid.uuid4().hex[:12],
            ),
            send_timeout_s=cfg.send_timeout_s,
            max_outbox_frames=cfg.max_outbox_frames,
            max_outbox_bytes=cfg.max_outbox_bytes,
            preauth_budget=self._preauth_budget,
        )
        self._connections.add(conn)
        try:
            await conn.run(lambda event: self._handle(conn, event))
        finally:
            self._connections.discard(conn)

    def _handle(self, conn: Connection, event: Event) -> None:
        if isinstance(event, ClientAccepted):
            log.info(
                "session %s: %s (%s) authenticated as %r",
                conn.session_id,
                conn.peer_id,
                event.client_name,
                event.subject,
            )
        elif isinstance(event, RequestReceived):
            handler = self._handlers[event.name]
            handler(conn, event.correlation_id, event.body)
        elif isinstance(event, ClientViolation):
            log.info("session %s: %s", conn.session_id, event.error.message)

    @property
    def _handlers(self) -> dict[str, Callable[[Connection, int, Message], None]]:
        """The worker's handler of each request body (by body table name)."""
        return {
            "path_check_request": self._path_check_requested,
            "job_submit": self._submit,
            "job_control": self._control,
            "job_attach": self._attach,
            "directory_list_request": self._browse_requested,
        }

    def _path_check_requested(self, conn: Connection, cid: int, body: Message) -> None:
        assert isinstance(body, paths_pb2.PathCheckRequest)
        self._in_thread(
            conn,
            cid,
            "the path check",
            functools.partial(self.checker.check, body, features=conn.features),
        )

    def _browse_requested(self, conn: Connection, cid: int, body: Message) -> None:
        assert isinstance(body, paths_pb2.DirectoryListRequest)
        self._in_thread(
            conn,
            cid,
            "the listing",
            functools.partial(
                list_directory, self.policy, body, disclose_roots=self.config.disclose_mounts
            ),
        )

    def _in_thread(
        self, conn: Connection, cid: int, what: str, work: Callable[[], Message]
    ) -> None:
        """Answer request ``cid`` with ``work()`` run in a thread (file-system work).

        At most ``max_path_checks`` run per connection; past it, Error BUSY. ``work``
        may return an Error body (a typed refusal); an exception is answered INTERNAL.
        """
        if len(conn.tasks) >= self.config.max_path_checks:
            conn.reply_error(
                cid,
                make_error(
                    error_pb2.ERROR_CODE_BUSY,
                    "too many path checks and listings in flight on this connection",
                    retryable=True,
                ),
            )
            return

        async def run() -> None:
            try:
                answer = await asyncio.to_thread(work)
            except Exception as exc:
                log.exception("%s failed", what)
                answer = make_error(
                    error_pb2.ERROR_CODE_INTERNAL,
                    f"{what} failed on the worker: {type(exc).__name__}: {exc}",
                )
            if isinstance(answer, error_pb2.Error):
                conn.reply_error(cid, answer)
            else:
                conn.reply(cid, answer)

        conn.spawn(run())

    def _submit(self, conn: Connection, cid: int, body: Message) -> None:
        assert isinstance(body, job_pb2.JobSubmit)
        # The session checked the protocol rules (with the same config limit).
        answer, job = self.registry.submit_job(body, owner=conn.subject, rules_checked=True)
        if isinstance(answer, error_pb2.Error):
            conn.reply_error(cid, answer)
            return
        if job is not None and self.runner.batch:
            conn.spawn(self._submit_batch(conn, cid, job, answer))
            return
        conn.reply(cid, answer)
        if isinstance(answer, job_pb2.JobAccepted):
            accepted = self.registry.get(answer.job_id)
            if accepted is not None:
                conn.follow(accepted)
        if job is not None:
            self._notice(f"job {job.job_id} accepted from {job.owner or 'a client'}; "
                         f"run folder {job.run_dir}")
            self.runner.start_local(job)

    async def _submit_batch(self, conn: Connection, cid: int, job: Job, answer: Message) -> None:
        """A batch backend answers after the scheduler did (JobAccepted names its job id)."""
        assert isinstance(answer, job_pb2.JobAccepted)
        self._notice(f"job {job.job_id} accepted from {job.owner or 'a client'}; "
                     f"run folder {job.run_dir}; submitting to Slurm")
        # Shielded: a connection that closes meanwhile must not strand the submission.
        try:
            final = await asyncio.shield(self.runner.submit(job, answer))
        except Exception as exc:  # a bug, not Slurm's answer: the request still gets one
            log.exception("job %s: submitting to Slurm failed", job.job_id)
            if job.control is None:
                self.registry.forget(job.job_id)
            conn.reply_error(
                cid,
                make_error(
                    error_pb2.ERROR_CODE_INTERNAL,
                    f"the worker failed to submit the job: {type(exc).__name__}: {exc}",
                ),
            )
            return
        conn.reply(cid, final)
        if isinstance(final, job_pb2.JobAccepted):
            conn.follow(job)

    def _notice(self, text: str) -> None:
        if self.announce is not None:
            self.announce(text)
        else:
            log.info("%s", text)

    def _owned(self, conn: Connection, correlation_id: int, job_id: str) -> Job | None:
        job = self.registry.get(job_id)
        if job is None:
            conn.reply_error(
                correlation_id,
                make_error(
                    error_pb2.ERROR_CODE_NOT_FOUND,
                    f"no job {job_id!r} on this worker",
                    details={"job_id": job_id},
                ),
            )
            return None
        if job.owner != conn.subject:
            conn.reply_error(
                correlation_id,
                make_error(
                    error_pb2.ERROR_CODE_FORBIDDEN,
                    f"job {job_id!r} belongs to another user",
                    details={"job_id": job_id},
                ),
            )
            return None
        return job

    def _control(self, conn: Connection, cid: int, control: Message) -> None:
        assert isinstance(control, job_pb2.JobControl)
        job = self._owned(conn, cid, control.job_id)
        if job is None:
            return
        if not job.active:
            conn.reply(cid, job.status(f"the job already ended: {job.message}"))
            return
        if control.action == job_pb2.CONTROL_ACTION_STOP:
            job.stop()
        else:
            job.cancel()
        conn.reply(cid, job.status())

    def _attach(self, conn: Connection, cid: int, attach: Message) -> None:
        assert isinstance(attach, job_pb2.JobAttach)
        job = self._owned(conn, cid, attach.job_id)
        if job is None:
            return
        messages, dropped = job.replay(attach.after_sequence)
        note = (
            f"{dropped} older progress message(s) are no longer kept and were not resent"
            if dropped
            else ""
        )
        conn.reply(cid, job.status(note))
        for message in messages:
            conn.send(message)
        # No await between replay and follow: nothing is missed or sent twice.
        conn.unfollow(job.job_id)
        conn.follow(job)
