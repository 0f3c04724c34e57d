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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sleap_rtc.worker.config_yaml import ConfigYamlError, parse_config_yaml
from sleap_rtc.worker.jobrecord import ACTIVE_STATES, Job, JobMessage
from sleap_rtc.worker.mounts import MountPolicy, NotAbsolute, OutsideMounts
from sleap_rtc.worker.session import make_error, submit_violations
from sleap_rtc.worker.trainer import DEFAULT_TRAINER_COMMAND, TrainPlan, build_command
from sleap_rtc_proto import rules
from sleap_rtc_proto.codec import MAX_CONFIG_BYTES
from sleap_rtc_proto.v1 import error_pb2, job_pb2

__all__ = ["ACTIVE_STATES", "IntakeConfig", "Job", "JobMessage", "JobRegistry", "spec_hash"]

V = job_pb2
#: (token, resolved labels path) -> None when valid, else a human reason.
TokenCheck = Callable[[str, str], str | None]
SubmitAnswer = job_pb2.JobAccepted | job_pb2.JobRejected | error_pb2.Error

#: Config keys holding paths the trainer uses as they are (others are overridden).
CONFIG_PATH_KEYS = (
    ("data_config", "test_file_path"),
    ("data_config", "cache_img_path"),
    ("model_config", "pretrained_backbone_weights"),
    ("model_config", "pretrained_head_weights"),
)
CONFIG_PREFIX = "job-"
CONFIG_SUFFIX = ".yaml"
_RUN_NAME = re.compile(r"[A-Za-z0-9._-]{1,128}")

#: Rule ids of the worker's own checks (beyond sleap_rtc_proto.rules).
WORKER_RULES: dict[str, str] = {
    "job_submit.job_id.conflict": rules.WORKER_RULES["job_submit.job_id.conflict"],
    "worker.path.absolute": "A worker path is an absolute POSIX path.",
    "worker.path.mounts": "A worker path resolves (symlinks followed) inside the mounts.",
    "worker.path.exists": "A worker path exists.",
    "worker.path.readable": "A worker path is a readable file (or a folder for prefixes).",
    "worker.path.trainer": "A worker path can be passed to the trainer.",
    "worker.check_token.required": "The worker requires a passing path check before submit.",
    "worker.check_token.stale": "The checked files have not changed since the check.",
    "worker.config_paths.single": "A job runs one config file (submit one job per config).",
    "worker.config_path.mounts": "Paths inside the config (pretrained weights, test files, "
    "image cache) resolve inside the mounts.",
    "config.model_config.required": "The config has a model_config section.",
}


def spec_hash(submit: job_pb2.JobSubmit) -> str:
    """Canonical hash of a submit's spec (the idempotency comparison)."""
    return hashlib.sha256(submit.spec.SerializeToString(deterministic=True)).hexdigest()


def _violation(
    field: str, rule_id: str, code: int, message: str, path: str = "", line: int = 0
) -> job_pb2.FieldViolation:
    return job_pb2.FieldViolation(
        field=field,
        rule_id=rule_id,
        code=code,  # type: ignore[arg-type]
        message=message,
        path=path,
        line=line,
    )


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
        token_check: validates a token for the resolved labels path; None
            skips the check (then tokens cannot be required).
        history_limit: progress/log messages kept per job.
        max_finished_jobs: ended jobs remembered for idempotency and attach.
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

    # --- lifecycle ---------------------------------------------------------

    def prepare(self) -> list[Path]:
        """Create the private configs folder and remove stale temp configs (left by a
        crash). Returns the removed files."""
        self.configs_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.configs_dir, 0o700)
        removed = []
        for path in self.configs_dir.glob(f"{CONFIG_PREFIX}*{CONFIG_SUFFIX}"):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed.append(path)
        return removed

    def get(self, job_id: str) -> Job | None:
        return self._jobs.get(job_id)

    def jobs(self) -> list[Job]:
        return list(self._jobs.values())

    def active_count(self) -> int:
        return sum(1 for job in self._jobs.values() if job.active)

    # --- intake --------------------------------------------------------------

    def submit(self, submit: job_pb2.JobSubmit, *, owner: str = "") -> SubmitAnswer:
        """The answer to ``submit``; see :meth:`submit_job`."""
        return self.submit_job(submit, owner=owner)[0]

    def submit_job(
        self, submit: job_pb2.JobSubmit, *, owner: str = ""
    ) -> tuple[SubmitAnswer, Job | None]:
        """The answer to ``submit``, and the new job when one was accepted now.

        The caller starts the new job's run. A repeated submit returns the
        first answer with ``duplicate`` set and no new job.
        """
        job_id = submit.job_id
        violations = [
            v.to_proto()
            for v in submit_violations(submit, max_config_bytes=self.config.max_config_bytes)
        ]
        if violations:
            return self._reject(job_id, violations), None
        digest = spec_hash(submit)
        existing = self._jobs.get(job_id)
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
        out: list[job_pb2.FieldViolation] = []
        labels = self._file("spec.labels_path", spec.labels_path, out)
        val = (
            self._file("spec.val_labels_path", spec.val_labels_path, out)
            if spec.HasField("val_labels_path")
            else None
        )
        resume = (
            self._file("spec.resume_ckpt_path", spec.resume_ckpt_path, out)
            if spec.HasField("resume_ckpt_path")
            else None
        )
        exact = tuple(
            (old, str(p))
            for old, new in sorted(spec.path_mappings.items())
            if (p := self._file(f"spec.path_mappings[{old!r}]", new, out)) is not None
        )
        prefixes = tuple(
            (old, new)
            for old, new in sorted(spec.prefix_mappings.items())
            if self._inside(f"spec.prefix_mappings[{old!r}]", new, out) is not None
        )
        content, config_field, config_path = self._config_text(spec, out)
        data: dict[str, Any] | None = None
        if content is not None:
            try:
                data = parse_config_yaml(content, max_bytes=self.config.max_config_bytes)
            except ConfigYamlError as exc:
                out.append(exc.to_violation(field=config_field, path=config_path))
            else:
                self._config_paths(data, config_field, out)
                if not isinstance(data.get("model_config"), dict):
                    out.append(
                        _violation(
                            config_field,
                            "config.model_config.required",
                            V.VIOLATION_CODE_BAD_CONFIG,
                            "the config has no model_config section; sleap-nn needs one",
                            config_path,
                        )
                    )
        if labels is not None:
            self._check_token(submit.check_token, str(labels), out)
        if out:
            return self._reject(submit.job_id, out), None
        assert labels is not None and content is not None and data is not None
        # Busy only after validation: BUSY is retryable, so the same submit must be valid.
        if self.active_count() >= self.config.max_concurrent_jobs:
            return make_error(
                error_pb2.ERROR_CODE_BUSY,
                f"the worker is running {self.active_count()} job(s), its limit; "
                "try again when one ends",
                details={"max_concurrent_jobs": str(self.config.max_concurrent_jobs)},
                retryable=True,
            ), None
        run_name = self._run_name(spec, data, submit.job_id)
        ckpt_dir = self._ckpt_dir(submit.job_id)
        plan = TrainPlan(
            config_file=self.configs_dir / "unset.yaml",
            labels_path=str(labels),
            ckpt_dir=ckpt_dir,
            run_name=run_name,
            val_labels_path=str(val) if val is not None else None,
            max_epochs=spec.max_epochs if spec.HasField("max_epochs") else None,
            batch_size=spec.batch_size if spec.HasField("batch_size") else None,
            learning_rate=spec.learning_rate if spec.HasField("learning_rate") else None,
            resume_ckpt_path=str(resume) if resume is not None else None,
            video_path_map=exact,
            prefix_map=prefixes,
        )
        try:
            build_command(self.config.trainer_command, plan, publish_port=1, controller_port=1)
        except ValueError as exc:
            return self._reject(
                submit.job_id,
                [_violation("spec", "worker.path.trainer", V.VIOLATION_CODE_INVALID, str(exc))],
            ), None
        config_file = self._write_private(submit.job_id, content)
        try:
            ckpt_dir.mkdir(parents=True, exist_ok=False)
        except OSError as exc:
            config_file.unlink(missing_ok=True)
            return make_error(
                error_pb2.ERROR_CODE_INTERNAL,
                f"could not create the run folder {ckpt_dir}: {exc.strerror or exc}",
            ), None
        plan = dataclasses.replace(plan, config_file=config_file)
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
        )
        self._jobs[submit.job_id] = job
        self._evict()
        return accepted, job

    # --- pieces of intake ------------------------------------------------------

    def _inside(self, field: str, path: str, out: list[job_pb2.FieldViolation]) -> Path | None:
        try:
            return self.config.policy.resolve(path)
        except NotAbsolute:
            out.append(
                _violation(
                    field,
                    "worker.path.absolute",
                    V.VIOLATION_CODE_INVALID,
                    f"{path!r} is not an absolute worker path",
                    path,
                )
            )
        except OutsideMounts:
            out.append(
                _violation(
                    field,
                    "worker.path.mounts",
                    V.VIOLATION_CODE_OUTSIDE_MOUNTS,
                    f"{path!r} lies outside the worker's allowed mounts "
                    f"({', '.join(str(r) for r in self.config.policy.roots)})",
                    path,
                )
            )
        return None

    def _file(self, field: str, path: str, out: list[job_pb2.FieldViolation]) -> Path | None:
        resolved = self._inside(field, path, out)
        if resolved is None:
            return None
        if not resolved.exists():
            out.append(
                _violation(
                    field,
                    "worker.path.exists",
                    V.VIOLATION_CODE_NOT_FOUND,
                    f"{path!r} does not exist on the worker",
                    path,
                )
            )
            return None
        if not resolved.is_file() or not os.access(resolved, os.R_OK):
            out.append(
                _violation(
                    field,
                    "worker.path.readable",
                    V.VIOLATION_CODE_UNREADABLE,
                    f"{path!r} is not a readable file",
                    path,
                )
            )
            return None
        return resolved

    def _config_text(
        self, spec: Any, out: list[job_pb2.FieldViolation]
    ) -> tuple[str | None, str, str]:
        """The config YAML text, the field it came from, and its path (config_paths)."""
        if spec.HasField("config_content"):
            return str(spec.config_content), "spec.config_content", ""
        if len(spec.config_paths) != 1:
            out.append(
                _violation(
                    "spec.config_paths",
                    "worker.config_paths.single",
                    V.VIOLATION_CODE_INVALID,
                    f"{len(spec.config_paths)} config paths sent; a job runs one config "
                    "(send config_content, or one job per config file)",
                )
            )
            return None, "spec.config_paths", ""
        raw = spec.config_paths[0]
        field = "spec.config_paths[0]"
        path = self._file(field, raw, out)
        if path is None:
            return None, field, raw
        try:
            with open(path, "rb") as fh:
                data = fh.read(self.config.max_config_bytes + 1)
        except OSError as exc:
            out.append(
                _violation(
                    field,
                    "worker.path.readable",
                    V.VIOLATION_CODE_UNREADABLE,
                    f"{raw!r} cannot be read: {exc.strerror or exc}",
                    raw,
                )
            )
            return None, field, raw
        if len(data) > self.config.max_config_bytes:
            out.append(
                _violation(
                    field,
                    "config.yaml.size",
                    V.VIOLATION_CODE_TOO_LARGE,
                    f"{raw!r} is over the limit of {self.config.max_config_bytes} bytes",
                    raw,
                )
            )
            return None, field, raw
        return data.decode("utf-8", errors="replace"), field, raw

    def _check_token(self, token: str, labels: str, out: list[job_pb2.FieldViolation]) -> None:
        if not token:
            if self.config.require_check_token:
                out.append(
                    _violation(
                        "check_token",
                        "worker.check_token.required",
                        V.VIOLATION_CODE_STALE_CHECK,
                        "no path check token: run a path check (PathCheckRequest) first and "
                        "send its check_token",
                    )
                )
            return
        if self.config.token_check is None:
            return
        try:
            reason = self.config.token_check(token, labels)
        except Exception as exc:  # a checker bug must not accept the job
            reason = f"the token could not be verified ({type(exc).__name__})"
        if reason is not None:
            out.append(
                _violation(
                    "check_token",
                    "worker.check_token.stale",
                    V.VIOLATION_CODE_STALE_CHECK,
                    f"the path check no longer holds: {reason}; check the paths again",
                    labels,
                )
            )

    def _config_paths(
        self, data: dict[str, Any], field: str, out: list[job_pb2.FieldViolation]
    ) -> None:
        """Paths inside the config that the trainer would use as they are."""
        for section, key in CONFIG_PATH_KEYS:
            part = data.get(section)
            value = part.get(key) if isinstance(part, dict) else None
            values = value if isinstance(value, list) else [value]
            for item in values:
                if item is None or item == "":
                    continue
                text = str(item)
                before = len(out)
                self._inside(f"{field}:{section}.{key}", text, out)
                for violation in out[before:]:
                    violation.rule_id = "worker.config_path.mounts"

    @staticmethod
    def _run_name(spec: Any, data: dict[str, Any], job_id: str) -> str:
        if spec.HasField("run_name"):
            return str(spec.run_name)
        trainer = data.get("trainer_config")
        name = trainer.get("run_name") if isinstance(trainer, dict) else None
        if isinstance(name, str) and _RUN_NAME.fullmatch(name) and name not in (".", ".."):
            return name
        return job_id

    def _ckpt_dir(self, job_id: str) -> Path:
        base = self.config.runs_dir / job_id
        candidate, n = base, 1
        while candidate.exists() and n < 10_000:  # the same job id after a worker restart
            n += 1
            candidate = base.with_name(f"{job_id}.{n}")
        return candidate

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
