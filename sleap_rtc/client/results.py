"""How a presubmission flow ends: the seed's messages and the frozen :class:`FlowResult`.

Every way the flow can end is built here, so each outcome carries the same
context (job id, labels path, mappings, check token) and exactly one message
for the user. Inside the flow, :class:`FlowEnded` carries a finished result out
of any step.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from sleap_rtc.client.views import CheckView
from sleap_rtc_proto.v1 import job_pb2, progress_pb2, scheduler_pb2

#: The seed's messages, exactly.
LOGIN_REQUIRED = "Login required. Please try again."
COULD_NOT_CONNECT = "Could not connect to worker. Check that the worker is running."
CONNECTION_LOST = "Connection lost. Try again."
#: A worker that stays silent during the path check.
NO_ANSWER = "The worker did not answer in time. Try again."


class FlowStatus(StrEnum):
    """How a flow ended."""

    SUCCESS = "success"
    CANCELLED = "cancelled"
    ERROR = "error"


@dataclass(frozen=True)
class ViolationView:
    """One reason the worker gave for rejecting a job, field by field."""

    field: str
    rule_id: str
    code: str
    message: str
    path: str = ""
    line: int = 0

    def __str__(self) -> str:
        where = f" (line {self.line})" if self.line else ""
        return f"{self.field}: {self.message}{where}"


@dataclass(frozen=True)
class SchedulerView:
    """Where the worker's batch scheduler has the job (protocol 1.2, ``scheduler``)."""

    system: str
    id: str
    state: str
    reason: str = ""
    node: str = ""
    exit_code: int | None = None
    signal: int | None = None

    @classmethod
    def of(cls, message: Any) -> SchedulerView | None:
        """The view of ``message.scheduler`` (None when the worker did not set it)."""
        if not message.HasField("scheduler"):
            return None
        s: scheduler_pb2.SchedulerJob = message.scheduler
        return cls(
            s.system,
            s.id,
            s.state,
            s.reason,
            s.node,
            s.exit_code if s.HasField("exit_code") else None,
            s.signal if s.HasField("signal") else None,
        )

    def __str__(self) -> str:
        name = "Slurm" if self.system == "slurm" else self.system
        text = f"{name} job {self.id or '(not yet submitted)'}: {self.state}"
        if self.reason and self.reason != "None":
            text += f" ({self.reason})"
        if self.node:
            text += f" on {self.node}"
        if self.exit_code is not None:
            text += f", exit code {self.exit_code}"
        return text


@dataclass(frozen=True)
class AcceptedView:
    """The worker's JobAccepted (or, on a retry that re-attached, the job's JobStatus)."""

    job_id: str
    run_dir: str
    warnings: tuple[str, ...] = ()
    duplicate: bool = False
    #: Where the worker's batch scheduler queued the job (None: it runs on the worker).
    scheduler: SchedulerView | None = None


@dataclass(frozen=True)
class CompletionView:
    """The worker's JobComplete."""

    run_dir: str
    outputs: tuple[str, ...]
    duration_seconds: float
    stopped_early: bool
    scheduler: SchedulerView | None = None


@dataclass(frozen=True)
class FailureView:
    """The worker's JobFailed."""

    code: str
    message: str
    exit_code: int | None
    log_tail: tuple[str, ...]
    duration_seconds: float
    scheduler: SchedulerView | None = None


@dataclass(frozen=True)
class FlowResult:
    """The outcome of a presubmission flow.

    Attributes:
        status: success, cancelled (the user cancelled; show nothing) or error.
        message: one sentence for the user ("" when cancelled).
        stage: where it ended: config, auth, connect, check, resolve, submit,
            progress or done.
        job_id: the submitted job id ("" if nothing was submitted). After a
            "Connection lost", retry with ``retry_job_id=job_id``: the worker
            never starts a job id twice, and a job it already has is followed.
        labels_path: the labels file as the worker sees it.
        path_mappings / prefix_mappings: the mappings used (and submitted).
        check_token: the passing check's token.
        check: the last path check, for display.
        accepted / completion / failure: the worker's answers, when reached.
        violations: JobRejected's reasons, field by field.
        details: extra lines (the underlying error, a hint).

    A retry that re-attached to a job the worker already had ran no check:
    its ``check``, mappings and token are empty.
    """

    status: FlowStatus
    message: str = ""
    stage: str = ""
    job_id: str = ""
    labels_path: str = ""
    path_mappings: Mapping[str, str] = field(default_factory=dict)
    prefix_mappings: Mapping[str, str] = field(default_factory=dict)
    check_token: str = ""
    check: CheckView | None = None
    accepted: AcceptedView | None = None
    completion: CompletionView | None = None
    failure: FailureView | None = None
    violations: tuple[ViolationView, ...] = ()
    details: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.status is FlowStatus.SUCCESS

    @property
    def cancelled(self) -> bool:
        return self.status is FlowStatus.CANCELLED

    @property
    def submitted(self) -> bool:
        """True when the worker accepted the job (possibly as a duplicate)."""
        return self.accepted is not None


#: The seed's name for the result of the presubmission checks.
PresubmissionResult = FlowResult


class FlowEnded(Exception):
    """Ends the flow from inside any step with a finished :class:`FlowResult`."""

    def __init__(self, result: FlowResult) -> None:
        super().__init__(result.message)
        self.result = result


@dataclass
class Checked:
    """A passing path check and exactly the request that passed.

    Attributes:
        view: the worker's answer.
        labels_path: the labels path the request named (client side).
        path_mappings / prefix_mappings: the request's mappings, as sent.
    """

    view: CheckView
    labels_path: str
    path_mappings: dict[str, str]
    prefix_mappings: dict[str, str]

    def video_mappings(self) -> dict[str, str]:
        """The exact mappings minus the labels file's own (that one became
        ``labels_path``): what the JobSubmit's ``path_mappings`` carry, so the
        worker can bind the check token to them."""
        labels = {self.labels_path, self.view.labels.original_path}
        return {k: v for k, v in self.path_mappings.items() if k not in labels}

    def worker_labels_path(self) -> str:
        return self.view.labels.worker_path or self.labels_path


def _context(checked: Checked | None) -> dict[str, Any]:
    """The fields every post-check result carries."""
    if checked is None:
        return {}
    return {
        "labels_path": checked.worker_labels_path(),
        "path_mappings": checked.video_mappings(),
        "prefix_mappings": dict(checked.prefix_mappings),
        "check_token": checked.view.check_token,
        "check": checked.view,
    }


def error_result(
    stage: str,
    message: str,
    *details: str,
    view: CheckView | None = None,
    job_id: str = "",
    checked: Checked | None = None,
    mappings: tuple[Mapping[str, str], Mapping[str, str]] | None = None,
) -> FlowResult:
    """An error; with ``checked`` it carries the passing check's context."""
    if checked is not None:
        return FlowResult(FlowStatus.ERROR, message, stage=stage, job_id=job_id,
                          details=tuple(d for d in details if d), **_context(checked))
    paths, prefixes = mappings if mappings is not None else (
        (dict(view.path_mappings), dict(view.prefix_mappings)) if view is not None else ({}, {})
    )
    return FlowResult(
        FlowStatus.ERROR,
        message,
        stage=stage,
        job_id=job_id,
        check=view,
        path_mappings=paths,
        prefix_mappings=prefixes,
        details=tuple(d for d in details if d),
    )


def missing_result(view: CheckView, why: str) -> FlowResult:
    """Paths still missing: the list, and the storage hint when every video is."""
    missing = view.missing_paths()
    lines = "\n".join(f"- {p}" for p in missing)
    message = f"{len(missing)} path(s) {why}:\n{lines}"
    if view.hint:
        message += f"\n{view.hint}"
    return error_result("resolve", message, view=view)


def checked_result(checked: Checked) -> FlowResult:
    """Steps 2-4 passed (``PresubmissionFlow.check``)."""
    return FlowResult(FlowStatus.SUCCESS, "All paths were found on the worker.", stage="check",
                      **_context(checked))


def rejected_result(
    checked: Checked, job_id: str, rejected: job_pb2.JobRejected
) -> FlowResult:
    """JobRejected: the worker's reasons, field by field."""
    violations = tuple(
        ViolationView(
            v.field,
            v.rule_id,
            code_name(job_pb2.ViolationCode, "VIOLATION_CODE_", v.code),
            v.message,
            v.path,
            v.line,
        )
        for v in rejected.violations
    )
    lines = "\n".join(f"- {v}" for v in violations)
    summary = "The worker rejected the job" + (
        ":" if lines else f": {rejected.message}" if rejected.message else "."
    )
    return FlowResult(
        FlowStatus.ERROR,
        f"{summary}\n{lines}" if lines else summary,
        stage="submit",
        job_id=job_id,
        violations=violations,
        **_context(checked),
    )


def success_result(
    checked: Checked | None,
    job_id: str,
    accepted: AcceptedView,
    message: str,
    stage: str,
    completion: CompletionView | None = None,
) -> FlowResult:
    return FlowResult(FlowStatus.SUCCESS, message, stage=stage, job_id=job_id, accepted=accepted,
                      completion=completion, **_context(checked))


def completed_result(
    checked: Checked | None, job_id: str, accepted: AcceptedView, done: progress_pb2.JobComplete
) -> FlowResult:
    completion = CompletionView(done.run_dir, tuple(done.outputs), done.duration_seconds,
                                done.stopped_early, SchedulerView.of(done))
    how = "stopped early" if done.stopped_early else "finished"
    return success_result(checked, job_id, accepted, f"Training {how}.", "done",
                          completion=completion)


def failed_result(
    checked: Checked | None, job_id: str, accepted: AcceptedView, failed: progress_pb2.JobFailed
) -> FlowResult:
    """JobFailed: its message, exit code and the end of the trainer's log."""
    failure = FailureView(
        code_name(progress_pb2.FailureCode, "FAILURE_CODE_", failed.code),
        failed.message,
        failed.exit_code if failed.HasField("exit_code") else None,
        tuple(failed.log_tail),
        failed.duration_seconds,
        SchedulerView.of(failed),
    )
    exit_text = f" (exit code {failure.exit_code})" if failure.exit_code is not None else ""
    if failure.scheduler is not None:
        exit_text += f" [{failure.scheduler}]"
    tail = "\n".join(failure.log_tail[-20:])
    message = f"Training failed: {failed.message}{exit_text}"
    return FlowResult(FlowStatus.ERROR, message, stage="progress", job_id=job_id,
                      accepted=accepted, failure=failure, details=(tail,) if tail else (),
                      **_context(checked))


def lost_following_result(
    checked: Checked | None, job_id: str, accepted: AcceptedView, exc: BaseException
) -> FlowResult:
    """The connection was lost while following an accepted job."""
    return FlowResult(
        FlowStatus.ERROR,
        CONNECTION_LOST,
        stage="progress",
        job_id=job_id,
        accepted=accepted,
        details=(
            describe(exc),
            f"Job {job_id} was accepted and keeps running on the worker; retrying with the "
            "same job id re-attaches to it.",
        ),
        **_context(checked),
    )


def code_name(enum: Any, prefix: str, value: int) -> str:
    """An enum value's name without its prefix, lower case ("unspecified" if unknown)."""
    try:
        return str(enum.Name(value)).removeprefix(prefix).lower()
    except ValueError:
        return "unspecified"


def describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
