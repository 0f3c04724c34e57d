"""The canonical training config: what the trainer gets, written by the worker.

A client's config (``config_content`` or a ``config_paths`` file, already
parsed by :func:`~sleap_rtc.worker.config_yaml.parse_config_yaml`) is walked
against sleap-nn's own schema (:mod:`.sleapnn_paths`):

- keys the schema does not define are refused, Hydra's ``hydra`` and
  ``defaults`` by name (they make Hydra read other files);
- any ``${`` anywhere (key or value) is refused: OmegaConf would resolve the
  interpolation, and the resolved path is not the one checked;
- every path-valued field is resolved through the mounts and handed over
  resolved; the fields the worker sets (labels, run folder, resume
  checkpoint) are replaced;
- reporting services are off (``use_wandb: false``) unless the operator
  allows them.

The result is dumped as plain YAML, the only file in the trainer's ``--config``.

>>> from sleap_rtc.worker.mounts import MountPolicy
>>> out = canonicalize({"hydra": {"searchpath": ["file:///etc"]}}, MountPolicy(["/"]))
>>> [p.rule_id for p in out.problems]
['config.schema.hydra']
"""

from __future__ import annotations

import copy
import os
import stat
from dataclasses import dataclass, field
from typing import Any

import yaml

from sleap_rtc.worker.mounts import MountPolicy, NotAbsolute, OutsideMounts, PathRejected
from sleap_rtc.worker.sleapnn_paths import (
    FIELD_KINDS,
    REPORTING_SWITCHES,
    FieldKind,
    Leaf,
    Section,
    schema,
)
from sleap_rtc_proto.v1 import job_pb2

V = job_pb2

#: Rule ids of the checks here (worker rules, reported in FieldViolation.rule_id).
RULES: dict[str, str] = {
    "config.schema.hydra": "The config holds no Hydra directives (hydra, defaults).",
    "config.schema.unknown": "Every key is one sleap-nn's config schema defines.",
    "config.schema.type": "Sections are mappings; numeric and boolean fields hold no text.",
    "config.schema.unclassified": "A text field the worker does not know is left empty.",
    "config.interpolation": "The config holds no OmegaConf interpolation (${...}).",
    "config.reporting": "Reporting services (wandb) stay off unless the operator allows them.",
    "worker.config_path.mounts": "Paths inside the config resolve inside the mounts.",
    "worker.config_path.file": "File paths inside the config name readable files.",
}


@dataclass(frozen=True)
class Problem:
    """One refusal: the dotted key, the rule, the ViolationCode and a sentence."""

    key: str
    rule_id: str
    code: int
    message: str
    value: str = ""


@dataclass
class Canonical:
    """The canonical config (when ``problems`` is empty) and what was refused."""

    data: dict[str, Any]
    problems: list[Problem] = field(default_factory=list)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.data, sort_keys=False, allow_unicode=True)


def _strings(value: Any) -> list[str]:
    """Every string inside ``value`` (keys included)."""
    out: list[str] = []
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            out.append(item)
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
    return out


def _numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


class _Walker:
    def __init__(self, policy: MountPolicy, allow_reporting: bool, strict: bool) -> None:
        self.policy = policy
        self.allow_reporting = allow_reporting
        self.strict = strict
        self.problems: list[Problem] = []

    def refuse(self, key: str, rule: str, code: int, message: str, value: str = "") -> None:
        self.problems.append(Problem(key, rule, code, message, value))

    def section(self, data: dict[Any, Any], tree: Section, prefix: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in data.items():
            dotted = f"{prefix}{key}"
            if not isinstance(key, str) or key not in tree:
                if not prefix and key in ("hydra", "defaults"):
                    self.refuse(
                        dotted,
                        "config.schema.hydra",
                        V.VIOLATION_CODE_BAD_CONFIG,
                        f"{key!r} is a Hydra directive that makes the trainer read other "
                        "files; the worker composes the config itself: remove it",
                    )
                elif not self.strict and isinstance(key, str):
                    if any("${" in t for t in _strings(value)) or "${" in key:
                        self.refuse(
                            dotted,
                            "config.interpolation",
                            V.VIOLATION_CODE_BAD_CONFIG,
                            f"{dotted!r} holds an interpolation (${{...}}); write the value out",
                        )
                    else:
                        out[key] = copy.deepcopy(value)  # the trainer's own section
                else:
                    self.refuse(
                        dotted,
                        "config.schema.unknown",
                        V.VIOLATION_CODE_BAD_CONFIG,
                        f"{dotted!r} is not a field of sleap-nn's config schema",
                    )
                continue
            node = tree[key]
            if any("${" in s for s in _strings(value if isinstance(node, Leaf) else key)):
                self.refuse(
                    dotted,
                    "config.interpolation",
                    V.VIOLATION_CODE_BAD_CONFIG,
                    f"{dotted!r} holds an interpolation (${{...}}); write the value out",
                )
                continue
            if isinstance(node, dict):
                if value is None:
                    out[key] = None
                elif isinstance(value, dict):
                    out[key] = self.section(value, node, dotted + ".")
                else:
                    self.refuse(
                        dotted,
                        "config.schema.type",
                        V.VIOLATION_CODE_BAD_CONFIG,
                        f"{dotted!r} is a section of sleap-nn's config; expected a mapping",
                    )
                continue
            kept = self.leaf(dotted, node, value)
            if kept is not _DROP:
                out[key] = kept
        return out

    def leaf(self, dotted: str, node: Leaf, value: Any) -> Any:
        texts = _strings(value)
        if not node.admits_str:
            if dotted in REPORTING_SWITCHES and value is True and not self.allow_reporting:
                self.refuse(
                    dotted,
                    "config.reporting",
                    V.VIOLATION_CODE_BAD_CONFIG,
                    f"{dotted} would upload run data to a third-party service; this "
                    "worker does not allow reporting services (set it to false)",
                )
                return _DROP
            if any(not _numeric(t) for t in texts):
                self.refuse(
                    dotted,
                    "config.schema.type",
                    V.VIOLATION_CODE_BAD_CONFIG,
                    f"{dotted!r} takes a number or a boolean, not text",
                )
                return _DROP
            return value
        kind = FIELD_KINDS.get(dotted)
        if kind is None:
            if texts:
                self.refuse(
                    dotted,
                    "config.schema.unclassified",
                    V.VIOLATION_CODE_BAD_CONFIG,
                    f"{dotted!r} is a field this worker does not know how to check; leave it unset",
                )
                return _DROP
            return value
        if kind is FieldKind.WORKER:
            return _DROP  # the worker sets it
        if kind in (FieldKind.FILE, FieldKind.FOLDER):
            return self.paths(dotted, value, kind)
        if kind is FieldKind.FETCH and isinstance(value, str) and value:
            if value.startswith("/"):
                return self.paths(dotted, value, FieldKind.FILE)
            if value.startswith(("~", ".", "\\")) or os.path.isabs(value) or ":" in value[:3]:
                self.refuse(
                    dotted,
                    "worker.config_path.mounts",
                    V.VIOLATION_CODE_INVALID,
                    f"{dotted}: {value!r} looks like a relative or client path; use an "
                    "absolute worker path inside the mounts, or a weights name",
                    value,
                )
                return _DROP
        return copy.deepcopy(value)

    def paths(self, dotted: str, value: Any, kind: FieldKind) -> Any:
        if value is None or value == "":
            return value
        items = value if isinstance(value, list) else [value]
        out: list[Any] = []
        for item in items:
            if not isinstance(item, str):
                self.refuse(
                    dotted,
                    "config.schema.type",
                    V.VIOLATION_CODE_BAD_CONFIG,
                    f"{dotted!r} takes a path, not {type(item).__name__}",
                )
                return _DROP
            resolved = self.resolve(dotted, item, kind)
            if resolved is None:
                return _DROP
            out.append(resolved)
        return out if isinstance(value, list) else out[0]

    def resolve(self, dotted: str, path: str, kind: FieldKind) -> str | None:
        try:
            real = self.policy.resolve_str(path)
        except NotAbsolute:
            message = f"{dotted}: {path!r} is not an absolute worker path"
            self.refuse(
                dotted, "worker.config_path.mounts", V.VIOLATION_CODE_INVALID, message, path
            )
            return None
        except OutsideMounts:
            self.refuse(
                dotted,
                "worker.config_path.mounts",
                V.VIOLATION_CODE_OUTSIDE_MOUNTS,
                f"{dotted}: {path!r} lies outside the worker's allowed mounts",
                path,
            )
            return None
        except PathRejected as exc:
            self.refuse(
                dotted,
                "worker.config_path.mounts",
                V.VIOLATION_CODE_INVALID,
                f"{dotted}: {exc}",
                path,
            )
            return None
        if kind is FieldKind.FILE:
            try:
                st = os.stat(real)
            except OSError as exc:
                self.refuse(
                    dotted,
                    "worker.config_path.file",
                    V.VIOLATION_CODE_NOT_FOUND,
                    f"{dotted}: {path!r} cannot be used: {exc.strerror or exc}",
                    path,
                )
                return None
            if not stat.S_ISREG(st.st_mode) or not os.access(real, os.R_OK):
                self.refuse(
                    dotted,
                    "worker.config_path.file",
                    V.VIOLATION_CODE_UNREADABLE,
                    f"{dotted}: {path!r} is not a readable file",
                    path,
                )
                return None
        return real


_DROP: Any = object()


def canonicalize(
    data: dict[str, Any],
    policy: MountPolicy,
    *,
    labels: str | None = None,
    val_labels: str | None = None,
    resume: str | None = None,
    allow_reporting: bool = False,
    strict: bool = True,
) -> Canonical:
    """The canonical form of ``data`` with the worker's own paths set (see the module doc).

    ``strict``: refuse keys sleap-nn's schema does not define; when False (a
    trainer other than sleap-nn) they pass through, still free of interpolation.
    """
    walker = _Walker(policy, allow_reporting, strict)
    out = walker.section(data, schema(), "")
    data_config = out.setdefault("data_config", {}) or {}
    out["data_config"] = data_config
    if labels is not None:
        data_config["train_labels_path"] = [labels]
    data_config["val_labels_path"] = [val_labels] if val_labels is not None else None
    trainer = out.setdefault("trainer_config", {}) or {}
    out["trainer_config"] = trainer
    trainer["resume_ckpt_path"] = resume
    if not allow_reporting:
        trainer["use_wandb"] = False
    return Canonical(out, walker.problems)
