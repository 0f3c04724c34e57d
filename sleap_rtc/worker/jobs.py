"""Job intake and the job registry: idempotent JobSubmit, private temp configs, history.

:meth:`JobRegistry.submit` turns a JobSubmit into JobAccepted, JobRejected or
an Error (BUSY, FORBIDDEN), synchronously and without running anything, in
this order: the protocol rules; idempotency (same job id + same spec -> the
first answer again with ``duplicate`` set; a different spec -> CONFLICT);
validation (every path through the mounts policy, the config parsed safely,
paths inside the config checked, the path-check token verified); the
concurrency limit (BUSY is retryable, so it is only answered to a valid
submit); then the config is written to a private temp file (0600, in
``state_dir/configs``, outside every mount) and the run folder is created.
The validation itself lives in :mod:`.validate`.

Run folders: ``runs_dir/<run name>``, where the run name is the spec's
``run_name``, else the config's ``trainer_config.run_name`` (when it is a
plain folder name), else the job id; ``-1``, ``-2``... is appended when that
folder exists. The folder is created at acceptance, so JobAccepted.run_dir is
exactly where the trainer writes (``ckpt_dir=runs_dir``, ``run_name=<name>``).

Every job is recorded in the worker's job store (:mod:`.jobstore`, SQLite in
``state_dir``) before its JobAccepted is sent, so idempotency has no count
window: a job id is remembered until it ended longer than ``retention_s``
ago, across restarts (:meth:`JobRegistry.get` falls back to the store).

The service starts the run of a newly accepted job. Each :class:`Job`
numbers its progress, keeps a bounded history for :meth:`Job.replay` after a
reconnect (train_begin is always kept), and removes its temp config however
it ends; :meth:`JobRegistry.prepare` removes the ones a crash left behind.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import re
import secrets
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sleap_rtc.worker.events import make_error, submit_violations
from sleap_rtc.worker.jobrecord import Job
from sleap_rtc.worker.jobstore import JobStore
from sleap_rtc.worker.mounts import MountPolicy, PathRejected
from sleap_rtc.worker.sleapnn_paths import runs_sleap_nn
from sleap_rtc.worker.trainplan import DEFAULT_TRAINER_COMMAND, TrainPlan, build_command
from sleap_rtc.worker.validate import (
    Recheck,
    SubmitValidator,
    TokenCheck,
    ValidSpec,
)
from sleap_rtc.worker.validate import violation as _violation
from sleap_rtc_proto import rules
from sleap_rtc_proto.limits import MAX_CONFIG_BYTES
from sleap_rtc_proto.v1 import error_pb2, job_pb2

__all__ = [
    "IntakeConfig",
    "JobRegistry",
    "SubmitAnswer",
    "spec_hash",
]

V = job_pb2
SubmitAnswer = job_pb2.JobAccepted | job_pb2.JobRejected | error_pb2.Error

CONFIG_PREFIX = "job-"
CONFIG_SUFFIX = ".yaml"
_RUN_NAME = re.compile(r"[A-Za-z0-9._-]{1,128}")
#: Suffixed run folder names tried (``name-1``, ``name-2``, ...) before giving up.
_MAX_RUN_SUFFIX = 10_000


def spec_hash(submit: job_pb2.JobSubmit) -> str:
    """Canonical hash of a submit's spec (the idempotency comparison)."""
    return hashlib.sha256(submit.spec.SerializeToString(deterministic=True)).hexdigest()


# --- the registry ----------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class IntakeConfig:
    """The worker settings intake needs.

    Attributes:
        policy: allowed mounts; every path goes through it.
        state_dir: worker-owned folder (never inside a mount); temp configs
            live in ``state_dir/configs``.
        runs_dir: folder inside a mount where run folders are created.
        trainer_command: command prefix (checked by building the argv).
        max_concurrent_jobs: running jobs at once; past it, Error BUSY.
        max_config_bytes: cap on config_content and config files.
        require_check_token: refuse submits without a path-check token.
        token_check: verifies a token for the submit's resolved labels path
            and its mappings (e.g. ``PathChecker.verify_check_token``); None
            skips the check (then tokens cannot be required).
        history_limit: progress/log messages kept per job.
        max_finished_jobs: ended jobs kept in memory (the job store remembers
            every job for idempotency and attach; this only bounds memory).
        retention_s: how long the job store remembers an ended job (its id,
            spec digest and final message); None keeps every job.
        recheck: runs the path check again at intake (every video's resolved
            path goes to the trainer); None keeps the spec's mappings.
        allow_reporting: the operator allows reporting services (wandb).
    """

    policy: MountPolicy
    state_dir: Path
    runs_dir: Path
    trainer_command: Sequence[str] = DEFAULT_TRAINER_COMMAND
    max_concurrent_jobs: int = 1
    max_config_bytes: int = MAX_CONFIG_BYTES
    require_check_token: bool = True
    token_check: TokenCheck | None = None
    history_limit: int = 10_000
    max_finished_jobs: int = 1000
    retention_s: float | None = 30 * 86400.0
    recheck: Recheck | None = None
    allow_reporting: bool = False


class JobRegistry:
    """Every job this worker accepted, and the intake that accepts them."""

    def __init__(self, config: IntakeConfig) -> None:
        self.config = config
        self.configs_dir = config.state_dir / "configs"
        if config.require_check_token and config.token_check is None:
            raise ValueError("require_check_token needs a token_check")
        if config.policy.contains(self.configs_dir) or config.policy.contains(config.state_dir):
            raise ValueError(
                f"state_dir {config.state_dir} lies inside a user mount; private temp "
                "configs must live outside the mounts"
            )
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self.store = JobStore(config.state_dir)

    @property
    def validator(self) -> SubmitValidator:
        """The checks of :mod:`.validate`, with this registry's settings."""
        cfg = self.config
        return SubmitValidator(
            policy=cfg.policy,
            max_config_bytes=cfg.max_config_bytes,
            require_check_token=cfg.require_check_token,
            token_check=cfg.token_check,
            recheck=cfg.recheck,
            allow_reporting=cfg.allow_reporting,
            strict_schema=runs_sleap_nn(cfg.trainer_command),
        )

    # --- lifecycle ---------------------------------------------------------

    def prepare(self) -> list[Path]:
        """Create the private configs folder and remove stale temp configs (left by a
        crash). Returns the removed files."""
        self.configs_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.configs_dir, 0o700)
        self.store.purge(self.config.retention_s)
        removed = []
        for path in self.configs_dir.glob(f"{CONFIG_PREFIX}*{CONFIG_SUFFIX}"):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed.append(path)
        return removed

    def get(self, job_id: str) -> Job | None:
        job = self._jobs.get(job_id)
        if job is None:
            row = self.store.get(job_id)
            if row is not None:
                job = Job.from_row(row, self.store, self.config.history_limit)
                self.remember(job)
        return job

    def remember(self, job: Job) -> None:
        """Keep ``job`` in memory (a job the store or the start-up sweep rebuilt)."""
        self._jobs[job.job_id] = job
        self._evict()

    def forget(self, job_id: str) -> None:
        """Drop a job that never ran (its backend refused it after intake): memory,
        store and temp config, as if it had been rejected."""
        job = self._jobs.pop(job_id, None)
        self.store.forget(job_id)
        if job is not None:
            job.config_file.unlink(missing_ok=True)

    def jobs(self) -> list[Job]:
        return list(self._jobs.values())

    def active_count(self) -> int:
        return sum(1 for job in self._jobs.values() if job.active)

    # --- intake --------------------------------------------------------------

    def submit(self, submit: job_pb2.JobSubmit, *, owner: str = "") -> SubmitAnswer:
        """The answer to ``submit``; see :meth:`submit_job`."""
        return self.submit_job(submit, owner=owner)[0]

    def submit_job(
        self, submit: job_pb2.JobSubmit, *, owner: str = "", rules_checked: bool = False
    ) -> tuple[SubmitAnswer, Job | None]:
        """The answer to ``submit``, and the new job when one was accepted now.

        The caller starts the new job's run. A repeated submit returns the
        first answer with ``duplicate`` set and no new job. ``rules_checked``
        says the protocol rules already passed (a
        :class:`~sleap_rtc.worker.session.WorkerSession` hands out only such
        submits), so they are not checked a second time.
        """
        job_id = submit.job_id
        if not rules_checked:
            violations = [
                v.to_proto()
                for v in submit_violations(submit, max_config_bytes=self.config.max_config_bytes)
            ]
            if violations:
                return self._reject(job_id, violations), None
        digest = spec_hash(submit)
        existing = self.get(job_id)
        if existing is not None:
            if existing.owner != owner:
                return make_error(
                    error_pb2.ERROR_CODE_FORBIDDEN,
                    f"job {job_id!r} belongs to another user",
                    details={"job_id": job_id},
                ), None
            if existing.spec_hash != digest:
                return self._reject(
                    job_id,
                    [
                        _violation(
                            "job_id",
                            "job_submit.job_id.conflict",
                            V.VIOLATION_CODE_CONFLICT,
                            f"job id {job_id!r} was already used with a different spec; "
                            "choose a new job id",
                        )
                    ],
                ), None
            again = job_pb2.JobAccepted()
            again.CopyFrom(existing.accepted)
            again.duplicate = True
            return again, None
        return self._intake(submit, digest, owner)

    def _reject(
        self, job_id: str, violations: Sequence[job_pb2.FieldViolation]
    ) -> job_pb2.JobRejected:
        first = violations[0]
        more = f" (and {len(violations) - 1} more)" if len(violations) > 1 else ""
        return job_pb2.JobRejected(
            job_id=job_id,
            violations=list(violations),
            message=f"job {job_id!r} rejected: {first.message}{more}",
        )

    def _intake(
        self, submit: job_pb2.JobSubmit, digest: str, owner: str
    ) -> tuple[SubmitAnswer, Job | None]:
        spec = submit.spec
        checked = self.validator.validate(spec, submit.check_token)
        if not isinstance(checked, ValidSpec):
            return self._reject(submit.job_id, checked), None
        # Busy only after validation: BUSY is retryable, so the same submit must be valid.
        if self.active_count() >= self.config.max_concurrent_jobs:
            return make_error(
                error_pb2.ERROR_CODE_BUSY,
                f"the worker is running {self.active_count()} job(s), its limit; "
                "try again when one ends",
                details={"max_concurrent_jobs": str(self.config.max_concurrent_jobs)},
                retryable=True,
            ), None
        plan = TrainPlan(
            config_file=self.configs_dir / "unset.yaml",
            labels_path=str(checked.labels),
            ckpt_dir=self.config.runs_dir,
            run_name=self._run_name(spec, checked.data, submit.job_id),
            val_labels_path=str(checked.val) if checked.val is not None else None,
            max_epochs=spec.max_epochs if spec.HasField("max_epochs") else None,
            batch_size=spec.batch_size if spec.HasField("batch_size") else None,
            learning_rate=spec.learning_rate if spec.HasField("learning_rate") else None,
            resume_ckpt_path=str(checked.resume) if checked.resume is not None else None,
            video_path_map=checked.video_path_map,
            prefix_map=checked.prefix_map,
            manifest=checked.manifest,
        )
        try:
            build_command(self.config.trainer_command, plan, publish_port=1, controller_port=1)
        except ValueError as exc:
            return self._reject(
                submit.job_id,
                [_violation("spec", "worker.path.trainer", V.VIOLATION_CODE_INVALID, str(exc))],
            ), None
        config_file = self._write_private(submit.job_id, checked.content)
        try:
            ckpt_dir, run_name = self._reserve_run_dir(plan.run_name)
        except OSError as exc:
            config_file.unlink(missing_ok=True)
            return make_error(
                error_pb2.ERROR_CODE_INTERNAL,
                f"could not create a run folder in {self.config.runs_dir}: "
                f"{getattr(exc, 'strerror', None) or exc}",
            ), None
        plan = dataclasses.replace(
            plan, config_file=config_file, ckpt_dir=ckpt_dir, run_name=run_name
        )
        accepted = job_pb2.JobAccepted(
            job_id=submit.job_id,
            run_dir=str(plan.run_dir),
            warnings=rules.spec_warnings(spec),
        )
        job = Job(
            job_id=submit.job_id,
            spec_hash=digest,
            owner=owner,
            accepted=accepted,
            plan=plan,
            history_limit=self.config.history_limit,
            message="accepted",
            store=self.store,
        )
        job.save()  # committed before JobAccepted is sent
        self._jobs[submit.job_id] = job
        self._evict()
        self.store.purge(self.config.retention_s)
        return accepted, job

    @staticmethod
    def _run_name(spec: Any, data: dict[str, Any], job_id: str) -> str:
        if spec.HasField("run_name"):
            return str(spec.run_name)
        trainer = data.get("trainer_config")
        name = trainer.get("run_name") if isinstance(trainer, dict) else None
        if isinstance(name, str) and _RUN_NAME.fullmatch(name) and name not in (".", ".."):
            return name
        return job_id

    def _reserve_run_dir(self, name: str) -> tuple[Path, str]:
        """Create ``runs_dir/<name>``, or ``<name>-1``, ``<name>-2``... when taken
        (an earlier run, the same job id after a worker restart); return the
        resolved runs folder and the name used. Creating it reserves it:
        JobAccepted.run_dir stays exact (sleap-nn adds its own suffix only to a
        folder that already holds a best.ckpt).

        Raises:
            OSError: the runs folder is not usable or every name is taken.
        """
        try:
            runs = self.config.policy.resolve(self.config.runs_dir)
        except PathRejected as exc:
            raise OSError(f"the runs folder is not inside the mounts: {exc}") from None
        runs.mkdir(parents=True, exist_ok=True)
        for n in range(_MAX_RUN_SUFFIX):
            candidate = name if n == 0 else f"{name}-{n}"
            try:
                (runs / candidate).mkdir()
            except FileExistsError:
                continue
            return runs, candidate
        raise OSError(f"every run folder name from {name!r} to {name}-{n} is taken")

    def _write_private(self, job_id: str, content: str) -> Path:
        self.configs_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        while True:
            path = (
                self.configs_dir / f"{CONFIG_PREFIX}{job_id}-{secrets.token_hex(4)}{CONFIG_SUFFIX}"
            )
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            except FileExistsError:
                continue
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(content)
            return path

    def _evict(self) -> None:
        finished = [j for j in self._jobs.values() if not j.active]
        for job in finished[: max(0, len(finished) - self.config.max_finished_jobs)]:
            del self._jobs[job.job_id]
