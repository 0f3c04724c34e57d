"""The checking half of job intake: a JobSubmit's spec against the mounts, its config, its token.

:meth:`SubmitValidator.validate` reads nothing outside the mounts and writes
nothing: every path (labels, val labels, resume checkpoint, mapping targets,
config paths, paths inside the config) goes through the :class:`MountPolicy`,
the config YAML is parsed safely (:func:`parse_config_yaml`) and made
canonical against sleap-nn's schema (:func:`.canonconfig.canonicalize`: no
Hydra directives, no interpolation, every path field resolved, reporting off),
the path-check token is verified against the submit's resolved labels path
and its mappings, and the path check is run again (``recheck``) so that every
video's resolved path is handed to the trainer explicitly and the resolved
files are exactly the token's. The answer is either a :class:`ValidSpec` (resolved paths, the
config text and data) or the list of :class:`FieldViolation` s naming every
problem found. :mod:`.jobs` does the rest (idempotency, busy, temp config,
run folder).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from sleap_rtc.paths.model import shown
from sleap_rtc.worker.canonconfig import canonicalize
from sleap_rtc.worker.checktoken import token_files
from sleap_rtc.worker.config_yaml import ConfigYamlError, parse_config_yaml
from sleap_rtc.worker.intakecheck import Rechecked
from sleap_rtc.worker.mounts import MountPolicy, NotAbsolute, OutsideMounts, PathRejected
from sleap_rtc.worker.pathcheck import mapping_refusals
from sleap_rtc_proto import rules
from sleap_rtc_proto.limits import MAX_CONFIG_BYTES
from sleap_rtc_proto.v1 import job_pb2, spec_pb2

V = job_pb2

#: Rule ids of the worker's own checks (beyond sleap_rtc_proto.rules).
WORKER_RULES: dict[str, str] = {
    "job_submit.job_id.conflict": rules.WORKER_RULES["job_submit.job_id.conflict"],
    "worker.path.absolute": "A worker path is an absolute POSIX path.",
    "worker.path.mounts": "A worker path resolves (symlinks followed) inside the mounts.",
    "worker.path.exists": "A worker path exists.",
    "worker.path.readable": "A worker path is a readable file (or a folder for prefixes).",
    "worker.path.trainer": "A worker path can be passed to the trainer.",
    "worker.path.mapping": "A mapping is well formed, does not conflict with another, and its "
    "worker side lies inside the mounts (the path check's rule: pathcheck.mapping_refusals).",
    "worker.path.resolvable": "A worker path resolves fully (no symlink loop, not too long).",
    "worker.check_token.required": "The worker requires a passing path check before submit.",
    "worker.check_token.stale": "The checked files and the mappings have not changed since "
    "the check (the labels file's own mapping may be left out).",
    "worker.config_paths.single": "A job runs one config file (submit one job per config).",
    "worker.config_path.mounts": "Paths inside the config (pretrained weights, test files, "
    "image cache) resolve inside the mounts.",
    "config.model_config.required": "The config has a model_config section.",
}


class Recheck(Protocol):
    """Runs the path check again for a submit: the resolved videos, or a reason."""

    def __call__(
        self,
        labels_path: str,
        *,
        path_mappings: Mapping[str, str],
        prefix_mappings: Mapping[str, str],
    ) -> Rechecked | str: ...


class TokenCheck(Protocol):
    """Verifies a check token for a submit: None when valid, else a human reason.

    ``labels_path`` is the submit's resolved labels path; the mappings are the
    submit's, as sent (compared with the checked request's).
    """

    def __call__(
        self,
        token: str,
        *,
        labels_path: str,
        path_mappings: Mapping[str, str],
        prefix_mappings: Mapping[str, str],
    ) -> str | None: ...


def violation(
    field: str, rule_id: str, code: int, message: str, path: str = "", line: int = 0
) -> job_pb2.FieldViolation:
    """A FieldViolation (``code`` is a ViolationCode)."""
    return job_pb2.FieldViolation(
        field=field,
        rule_id=rule_id,
        code=code,  # type: ignore[arg-type]
        message=message,
        path=path,
        line=line,
    )


@dataclass(frozen=True)
class ValidSpec:
    """A spec that passed every check: resolved worker paths and the parsed config."""

    labels: Path
    val: Path | None
    resume: Path | None
    video_path_map: tuple[tuple[str, str], ...]
    prefix_map: tuple[tuple[str, str], ...]
    content: str
    data: dict[str, Any]
    manifest: tuple[tuple[str, int, int, int, int], ...] = ()


@dataclass(frozen=True)
class SubmitValidator:
    """Checks a spec's paths, config and token (sans-IO apart from reads in the mounts).

    Attributes:
        policy: allowed mounts; every path goes through it.
        max_config_bytes: cap on config_content and config files.
        require_check_token: refuse submits without a path-check token.
        token_check: verifies a token; None skips the check.
        recheck: runs the path check again (see :mod:`.intakecheck`); None
            hands the trainer the spec's own mappings (tests without a checker).
        allow_reporting: the operator allows reporting services (wandb).
        strict_schema: refuse keys sleap-nn's schema does not define (the
            trainer is sleap-nn); otherwise unknown keys pass through, while
            Hydra directives, interpolation and the path fields are still checked.
    """

    policy: MountPolicy
    max_config_bytes: int = MAX_CONFIG_BYTES
    require_check_token: bool = True
    token_check: TokenCheck | None = None
    recheck: Recheck | None = None
    allow_reporting: bool = False
    strict_schema: bool = True

    def validate(
        self, spec: spec_pb2.TrainJobSpec, check_token: str
    ) -> ValidSpec | list[job_pb2.FieldViolation]:
        """The checked spec, or every violation found."""
        out: list[job_pb2.FieldViolation] = []
        labels = self.file("spec.labels_path", spec.labels_path, out)
        val = (
            self.file("spec.val_labels_path", spec.val_labels_path, out)
            if spec.HasField("val_labels_path")
            else None
        )
        resume = (
            self.file("spec.resume_ckpt_path", spec.resume_ckpt_path, out)
            if spec.HasField("resume_ckpt_path")
            else None
        )
        exact = tuple(
            (old, str(p))
            for old, new in sorted(spec.path_mappings.items())
            if (p := self.file(f"spec.path_mappings[{old!r}]", new, out)) is not None
        )
        prefixes = tuple(
            (old, new)
            for old, new in sorted(spec.prefix_mappings.items())
            if self.inside(f"spec.prefix_mappings[{old!r}]", new, out) is not None
        )
        self.mappings(spec, out)
        content, config_field, config_path = self.config_text(spec, out)
        data: dict[str, Any] | None = None
        if content is not None:
            try:
                data = parse_config_yaml(content, max_bytes=self.max_config_bytes)
            except ConfigYamlError as exc:
                out.append(exc.to_violation(field=config_field, path=config_path))
            else:
                canonical = canonicalize(
                    data,
                    self.policy,
                    labels=str(labels) if labels is not None else None,
                    val_labels=str(val) if val is not None else None,
                    resume=str(resume) if resume is not None else None,
                    allow_reporting=self.allow_reporting,
                    strict=self.strict_schema,
                )
                for problem in canonical.problems:
                    out.append(
                        violation(
                            f"{config_field}:{problem.key}",
                            problem.rule_id,
                            problem.code,
                            problem.message,
                            problem.value or config_path,
                        )
                    )
                content = canonical.to_yaml()
                if not isinstance(data.get("model_config"), dict):
                    out.append(
                        violation(
                            config_field,
                            "config.model_config.required",
                            V.VIOLATION_CODE_BAD_CONFIG,
                            "the config has no model_config section; sleap-nn needs one",
                            config_path,
                        )
                    )
        if labels is not None:
            self.check_token(check_token, str(labels), spec, out)
        manifest: tuple[tuple[str, int, int, int, int], ...] = ()
        if labels is not None and not out and self.recheck is not None:
            again = self.again(str(labels), spec, check_token, out)
            if again is not None:
                exact, prefixes, manifest = again.video_map, (), again.manifest
        if out:
            return out
        assert labels is not None and content is not None and data is not None
        return ValidSpec(labels, val, resume, exact, prefixes, content, data, manifest)

    def mappings(self, spec: spec_pb2.TrainJobSpec, out: list[job_pb2.FieldViolation]) -> None:
        """The path check's own refusals of the spec's mappings (one rule on both sides)."""
        flagged = {v.field for v in out}
        for problem in mapping_refusals(
            self.policy, dict(spec.path_mappings), dict(spec.prefix_mappings)
        ):
            table = "path_mappings" if problem.kind == "exact" else "prefix_mappings"
            field = f"spec.{table}[{problem.original!r}]"
            if field not in flagged:
                out.append(
                    violation(
                        field,
                        "worker.path.mapping",
                        V.VIOLATION_CODE_INVALID,
                        str(problem),
                        problem.worker,
                    )
                )

    def inside(self, field: str, path: str, out: list[job_pb2.FieldViolation]) -> Path | None:
        """``path`` resolved inside the mounts, else None and a violation."""
        try:
            return self.policy.resolve(path)
        except OSError as exc:  # a lookup on the way failed: typed, never INTERNAL
            out.append(
                violation(
                    field,
                    "worker.path.readable",
                    V.VIOLATION_CODE_INVALID,
                    f"{field}: the path cannot be examined: {exc.strerror or exc}",
                    path[:1000],
                )
            )
        except NotAbsolute:
            out.append(
                violation(
                    field,
                    "worker.path.absolute",
                    V.VIOLATION_CODE_INVALID,
                    f"{path!r} is not an absolute worker path",
                    path,
                )
            )
        except OutsideMounts:
            out.append(
                violation(
                    field,
                    "worker.path.mounts",
                    V.VIOLATION_CODE_OUTSIDE_MOUNTS,
                    f"{shown(path)} lies outside the worker's shared storage "
                    f"({', '.join(str(r) for r in self.policy.roots)})",
                    path,
                )
            )
        except PathRejected as exc:  # a symlink loop, a path too long
            out.append(
                violation(
                    field,
                    "worker.path.resolvable",
                    V.VIOLATION_CODE_INVALID,
                    f"{field}: {exc}",
                    path[:1000],
                )
            )
        return None

    def file(self, field: str, path: str, out: list[job_pb2.FieldViolation]) -> Path | None:
        """``path`` resolved inside the mounts and a readable file, else None and a violation."""
        resolved = self.inside(field, path, out)
        if resolved is None:
            return None
        try:
            exists = resolved.exists()
        except OSError as exc:
            out.append(
                violation(
                    field,
                    "worker.path.readable",
                    V.VIOLATION_CODE_UNREADABLE,
                    f"{field}: {path[:200]!r} cannot be examined: {exc.strerror or exc}",
                    path[:1000],
                )
            )
            return None
        if not exists:
            out.append(
                violation(
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
                violation(
                    field,
                    "worker.path.readable",
                    V.VIOLATION_CODE_UNREADABLE,
                    f"{path!r} is not a readable file",
                    path,
                )
            )
            return None
        return resolved

    def config_text(
        self, spec: spec_pb2.TrainJobSpec, out: list[job_pb2.FieldViolation]
    ) -> tuple[str | None, str, str]:
        """The config YAML text, the field it came from, and its path (config_paths)."""
        if spec.HasField("config_content"):
            return str(spec.config_content), "spec.config_content", ""
        if len(spec.config_paths) != 1:
            out.append(
                violation(
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
        path = self.file(field, raw, out)
        if path is None:
            return None, field, raw
        try:
            with open(path, "rb") as fh:
                data = fh.read(self.max_config_bytes + 1)
        except OSError as exc:
            out.append(
                violation(
                    field,
                    "worker.path.readable",
                    V.VIOLATION_CODE_UNREADABLE,
                    f"{raw!r} cannot be read: {exc.strerror or exc}",
                    raw,
                )
            )
            return None, field, raw
        if len(data) > self.max_config_bytes:
            out.append(
                violation(
                    field,
                    "config.yaml.size",
                    V.VIOLATION_CODE_TOO_LARGE,
                    f"{raw!r} is over the limit of {self.max_config_bytes} bytes",
                    raw,
                )
            )
            return None, field, raw
        return data.decode("utf-8", errors="replace"), field, raw

    def check_token(
        self,
        token: str,
        labels: str,
        spec: spec_pb2.TrainJobSpec,
        out: list[job_pb2.FieldViolation],
    ) -> None:
        """Verify the path-check token for the resolved ``labels`` and the spec's mappings."""
        if not token:
            if self.require_check_token:
                out.append(
                    violation(
                        "check_token",
                        "worker.check_token.required",
                        V.VIOLATION_CODE_STALE_CHECK,
                        "no path check token: run a path check (PathCheckRequest) first and "
                        "send its check_token",
                    )
                )
            return
        if self.token_check is None:
            return
        try:
            reason = self.token_check(
                token,
                labels_path=labels,
                path_mappings=dict(spec.path_mappings),
                prefix_mappings=dict(spec.prefix_mappings),
            )
        except Exception as exc:  # a checker bug must not accept the job
            reason = f"the token could not be verified ({type(exc).__name__})"
        if reason is not None:
            out.append(
                violation(
                    "check_token",
                    "worker.check_token.stale",
                    V.VIOLATION_CODE_STALE_CHECK,
                    f"the path check no longer holds: {reason}; check the paths again",
                    labels,
                )
            )

    def again(
        self,
        labels: str,
        spec: spec_pb2.TrainJobSpec,
        token: str,
        out: list[job_pb2.FieldViolation],
    ) -> Rechecked | None:
        """Run the path check again; refuse unless it passes and covers the token's files."""
        assert self.recheck is not None
        try:
            again = self.recheck(
                labels,
                path_mappings=dict(spec.path_mappings),
                prefix_mappings=dict(spec.prefix_mappings),
            )
        except Exception as exc:  # a checker bug must not accept the job
            again = f"the paths could not be checked again ({type(exc).__name__}: {exc})"
        checked = token_files(token) if token else None
        if isinstance(again, Rechecked) and checked is not None and checked != again.files:
            changed = sorted(checked ^ again.files)
            again = (
                f"the videos now resolve to other files than the check's "
                f"(e.g. {changed[0]}); a link on the way changed"
            )
        if isinstance(again, str):
            out.append(
                violation(
                    "check_token",
                    "worker.check_token.stale",
                    V.VIOLATION_CODE_STALE_CHECK,
                    f"the path check no longer holds: {again}; check the paths again",
                    labels,
                )
            )
            return None
        return again
