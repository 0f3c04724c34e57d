"""Semantic validation that protobuf cannot express, with stable rule ids.

Each rule has a dotted id (listed in :data:`RULES` and documented in the proto
comments of spec.proto, job.proto and paths.proto), a field path and a human
message. Validators return every violation at once, never raise, and never
touch the filesystem: whether a path exists is the worker's question.

>>> from sleap_rtc_proto.v1 import spec_pb2
>>> [v.rule_id for v in validate_train_job_spec(spec_pb2.TrainJobSpec(labels_path="/d/l.slp"))]
['spec.config.required']
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import cast

from sleap_rtc_proto.limits import MAX_CONFIG_BYTES
from sleap_rtc_proto.v1 import job_pb2, paths_pb2, spec_pb2

#: Every rule checked here: rule id -> one-line description.
RULES: dict[str, str] = {
    "spec.config.required": "At least one of config_content and config_paths is set.",
    "spec.config_content.empty": "config_content, when present, is not empty or blank.",
    "spec.config_content.size": "config_content is at most max_config_bytes (UTF-8) long.",
    "spec.config_paths.absolute": (
        "Each config path is a non-empty absolute path (checked only when config_content "
        "is absent, since content wins)."
    ),
    "spec.labels_path.required": "labels_path is set.",
    "spec.labels_path.slp": "labels_path ends in .slp.",
    "spec.val_labels_path.slp": "val_labels_path, when present, ends in .slp.",
    "spec.max_epochs.range": "max_epochs, when present, is 1..100000.",
    "spec.batch_size.range": "batch_size, when present, is 1..4096.",
    "spec.learning_rate.range": "learning_rate, when present, is finite and 0 < lr <= 1.",
    "spec.run_name.format": "run_name, when present, is 1..128 of [A-Za-z0-9._-], not . or ..",
    "spec.path_mappings.absolute": "path_mappings keys and values are non-empty absolute paths.",
    "spec.prefix_mappings.absolute": (
        "prefix_mappings keys and values are non-empty absolute paths."
    ),
    "job_id.format": "A job id is 1..64 of [A-Za-z0-9._-], starting with a letter or digit.",
    "job_submit.spec.required": "JobSubmit.spec is set.",
    "job_control.action.specified": "JobControl.action is a known action, not UNSPECIFIED.",
    "path_check.labels_path.required": "PathCheckRequest.labels_path is set.",
    "path_check.mappings.absolute": (
        "PathCheckRequest path and prefix mappings: keys and values are non-empty absolute paths."
    ),
}

#: Rules that need worker state (documented in the protos, checked by the worker).
WORKER_RULES: dict[str, str] = {
    "job_submit.job_id.conflict": "A job id used before is not reused with a different spec.",
}

MAX_EPOCHS = 100_000
MAX_BATCH_SIZE = 4096
MAX_JOB_ID_CHARS = 64
MAX_RUN_NAME_CHARS = 128

_JOB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_RUN_NAME = re.compile(r"[A-Za-z0-9._-]{1,128}")
_WINDOWS_DRIVE = re.compile(r"[A-Za-z]:[\\/]")
_UNC = re.compile(r"\\\\[^\\/]+[\\/][^\\/]+")

REQUIRED = job_pb2.VIOLATION_CODE_REQUIRED
INVALID = job_pb2.VIOLATION_CODE_INVALID
OUT_OF_RANGE = job_pb2.VIOLATION_CODE_OUT_OF_RANGE
TOO_LARGE = job_pb2.VIOLATION_CODE_TOO_LARGE


@dataclass(frozen=True)
class Violation:
    """One broken rule.

    Attributes:
        field: dotted field path, e.g. ``"spec.labels_path"`` or
            ``"spec.path_mappings['/a.mp4']"``.
        rule_id: a key of :data:`RULES`.
        code: a ``job_pb2.ViolationCode`` value.
        message: a human sentence naming the problem.
        path: the filesystem path involved, if any.
    """

    field: str
    rule_id: str
    code: int
    message: str
    path: str = ""

    def to_proto(self) -> job_pb2.FieldViolation:
        """The wire FieldViolation for JobRejected."""
        return job_pb2.FieldViolation(
            field=self.field,
            rule_id=self.rule_id,
            code=cast(job_pb2.ViolationCode.ValueType, self.code),
            message=self.message,
            path=self.path,
        )


def is_valid_job_id(s: str) -> bool:
    """Whether ``s`` is a well-formed job id ("job_id.format")."""
    return _JOB_ID.fullmatch(s) is not None


def is_absolute_any(path: str) -> bool:
    """Whether ``path`` is absolute on POSIX or Windows (``C:\\x``, ``C:/x``, ``\\\\srv\\share``).

    Drive-relative (``C:x``) and root-relative (``\\x``) Windows paths are not
    absolute. A path containing NUL is never valid.
    """
    if not path or "\x00" in path:
        return False
    return (
        path.startswith("/")
        or _WINDOWS_DRIVE.match(path) is not None
        or _UNC.match(path) is not None
    )


def _has_slp_suffix(path: str) -> bool:
    return path.lower().endswith(".slp") and len(path) > len(".slp")


def _mapping_violations(
    mapping: Mapping[str, str], *, field: str, rule_id: str, what: str
) -> Iterable[Violation]:
    for key in sorted(mapping):
        value = mapping[key]
        for side, path in (("original", key), ("worker", value)):
            if not is_absolute_any(path):
                yield Violation(
                    f"{field}[{key!r}]",
                    rule_id,
                    INVALID,
                    f"{what} {side} path {path!r} must be a non-empty absolute path",
                    path,
                )


def validate_train_job_spec(
    spec: spec_pb2.TrainJobSpec, *, max_config_bytes: int = MAX_CONFIG_BYTES, prefix: str = "spec"
) -> list[Violation]:
    """Every rule violation of ``spec``; empty when valid.

    Both ``config_content`` and ``config_paths`` set is valid: content wins
    (see :func:`spec_warnings`).
    """
    out: list[Violation] = []
    has_content = spec.HasField("config_content")
    if not has_content and not spec.config_paths:
        out.append(
            Violation(
                f"{prefix}.config_content",
                "spec.config.required",
                REQUIRED,
                "a training config is required: set config_content (YAML) or config_paths",
            )
        )
    if has_content:
        content = spec.config_content
        size = len(content.encode("utf-8"))
        if not content.strip():
            out.append(
                Violation(
                    f"{prefix}.config_content",
                    "spec.config_content.empty",
                    INVALID,
                    "config_content is empty; send the training config YAML",
                )
            )
        elif size > max_config_bytes:
            out.append(
                Violation(
                    f"{prefix}.config_content",
                    "spec.config_content.size",
                    TOO_LARGE,
                    f"config_content is {size} bytes, over the limit of {max_config_bytes} bytes",
                )
            )
    else:
        for i, path in enumerate(spec.config_paths):
            if not is_absolute_any(path):
                out.append(
                    Violation(
                        f"{prefix}.config_paths[{i}]",
                        "spec.config_paths.absolute",
                        INVALID,
                        f"config path {path!r} must be a non-empty absolute worker path",
                        path,
                    )
                )
    if not spec.labels_path:
        out.append(
            Violation(
                f"{prefix}.labels_path",
                "spec.labels_path.required",
                REQUIRED,
                "labels_path (the training .slp file) is required",
            )
        )
    elif not _has_slp_suffix(spec.labels_path):
        out.append(
            Violation(
                f"{prefix}.labels_path",
                "spec.labels_path.slp",
                INVALID,
                f"labels_path {spec.labels_path!r} is not a SLEAP labels file (.slp)",
                spec.labels_path,
            )
        )
    if spec.HasField("val_labels_path") and not _has_slp_suffix(spec.val_labels_path):
        out.append(
            Violation(
                f"{prefix}.val_labels_path",
                "spec.val_labels_path.slp",
                INVALID,
                f"val_labels_path {spec.val_labels_path!r} is not a SLEAP labels file (.slp)",
                spec.val_labels_path,
            )
        )
    out.extend(_override_violations(spec, prefix))
    out.extend(
        _mapping_violations(
            spec.path_mappings,
            field=f"{prefix}.path_mappings",
            rule_id="spec.path_mappings.absolute",
            what="path mapping",
        )
    )
    out.extend(
        _mapping_violations(
            spec.prefix_mappings,
            field=f"{prefix}.prefix_mappings",
            rule_id="spec.prefix_mappings.absolute",
            what="prefix mapping",
        )
    )
    return out


def _override_violations(spec: spec_pb2.TrainJobSpec, prefix: str) -> Iterable[Violation]:
    if spec.HasField("max_epochs") and not 1 <= spec.max_epochs <= MAX_EPOCHS:
        yield Violation(
            f"{prefix}.max_epochs",
            "spec.max_epochs.range",
            OUT_OF_RANGE,
            f"max_epochs is {spec.max_epochs}; it must be between 1 and {MAX_EPOCHS}",
        )
    if spec.HasField("batch_size") and not 1 <= spec.batch_size <= MAX_BATCH_SIZE:
        yield Violation(
            f"{prefix}.batch_size",
            "spec.batch_size.range",
            OUT_OF_RANGE,
            f"batch_size is {spec.batch_size}; it must be between 1 and {MAX_BATCH_SIZE}",
        )
    if spec.HasField("learning_rate"):
        lr = spec.learning_rate
        if not (math.isfinite(lr) and 0.0 < lr <= 1.0):
            yield Violation(
                f"{prefix}.learning_rate",
                "spec.learning_rate.range",
                OUT_OF_RANGE,
                f"learning_rate is {lr!r}; it must be greater than 0 and at most 1",
            )
    if spec.HasField("run_name"):
        name = spec.run_name
        if _RUN_NAME.fullmatch(name) is None or name in (".", ".."):
            yield Violation(
                f"{prefix}.run_name",
                "spec.run_name.format",
                INVALID,
                f"run_name {name!r} must be a folder name of 1 to {MAX_RUN_NAME_CHARS} "
                'letters, digits, ".", "_" or "-" (not "." or "..")',
            )


def spec_warnings(spec: spec_pb2.TrainJobSpec) -> list[str]:
    """Human warnings for a valid spec, for JobAccepted.warnings."""
    if spec.HasField("config_content") and spec.config_paths:
        return [
            f"config_paths ignored ({len(spec.config_paths)} path(s)) because config_content "
            "was sent; config_content wins"
        ]
    return []


def _job_id_violations(job_id: str, field: str) -> list[Violation]:
    if is_valid_job_id(job_id):
        return []
    if not job_id:
        return [Violation(field, "job_id.format", REQUIRED, "job_id is required")]
    return [
        Violation(
            field,
            "job_id.format",
            INVALID,
            f"job id {job_id!r} must be 1 to {MAX_JOB_ID_CHARS} letters, digits, '.', '_' or '-', "
            "starting with a letter or digit",
        )
    ]


def validate_job_submit(msg: job_pb2.JobSubmit) -> list[Violation]:
    """Every rule violation of a JobSubmit (job id and spec)."""
    out = _job_id_violations(msg.job_id, "job_id")
    if not msg.HasField("spec"):
        out.append(Violation("spec", "job_submit.spec.required", REQUIRED, "JobSubmit has no spec"))
    else:
        out.extend(validate_train_job_spec(msg.spec))
    return out


def validate_path_check_request(msg: paths_pb2.PathCheckRequest) -> list[Violation]:
    """Every rule violation of a PathCheckRequest."""
    out: list[Violation] = []
    if not msg.labels_path:
        out.append(
            Violation(
                "labels_path",
                "path_check.labels_path.required",
                REQUIRED,
                "labels_path (the .slp file to check) is required",
            )
        )
    out.extend(
        _mapping_violations(
            msg.path_mappings,
            field="path_mappings",
            rule_id="path_check.mappings.absolute",
            what="path mapping",
        )
    )
    out.extend(
        _mapping_violations(
            msg.prefix_mappings,
            field="prefix_mappings",
            rule_id="path_check.mappings.absolute",
            what="prefix mapping",
        )
    )
    return out


def validate_job_control(msg: job_pb2.JobControl) -> list[Violation]:
    """Every rule violation of a JobControl."""
    out = _job_id_violations(msg.job_id, "job_id")
    known = job_pb2.ControlAction.values()
    if msg.action == job_pb2.CONTROL_ACTION_UNSPECIFIED or msg.action not in known:
        out.append(
            Violation(
                "action",
                "job_control.action.specified",
                REQUIRED if msg.action == 0 else INVALID,
                f"action {msg.action} is not a known action (STOP or CANCEL)",
            )
        )
    return out


def validate_job_attach(msg: job_pb2.JobAttach) -> list[Violation]:
    """Every rule violation of a JobAttach."""
    return _job_id_violations(msg.job_id, "job_id")
