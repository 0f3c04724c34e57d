"""The trainer's command line for one job: ``sleap-nn train --config FILE [maps] overrides``.

Pure functions (no I/O). sleap-nn 0.3.5 facts they rely on: at most one kind of
path-map option per run (``--video-path-map OLD NEW`` or ``--prefix-map OLD NEW``,
repeatable); ``++key=value`` sets a key whether or not the YAML has it (``+`` fails
on an existing key, a bare key fails on a missing one); a first override ending in
``.yaml`` would be taken as the config path.
"""

from __future__ import annotations

import re
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

#: The default trainer command; the worker appends the config and overrides.
DEFAULT_TRAINER_COMMAND: tuple[str, ...] = ("sleap-nn", "train")


@dataclass(frozen=True)
class TrainPlan:
    """Everything needed to start one training run, all worker paths already checked.

    Attributes:
        config_file: the private YAML config (the worker's temp copy).
        labels_path: resolved worker path of the training labels.
        ckpt_dir: folder that will hold the run folder (``trainer_config.ckpt_dir``).
        run_name: run folder name (``trainer_config.run_name``).
        val_labels_path: resolved worker path of validation labels, if any.
        max_epochs, batch_size, learning_rate: overrides; None keeps the config's.
        resume_ckpt_path: resolved checkpoint to resume from, if any.
        video_path_map: exact (original, worker) video path pairs.
        prefix_map: (original prefix, worker prefix) pairs.
        manifest: ``(path, dev, inode, size, mtime_ns)`` of every file the path
            check covered, re-checked by the launcher just before the trainer starts.
    """

    config_file: Path
    labels_path: str
    ckpt_dir: Path
    run_name: str
    val_labels_path: str | None = None
    max_epochs: int | None = None
    batch_size: int | None = None
    learning_rate: float | None = None
    resume_ckpt_path: str | None = None
    video_path_map: tuple[tuple[str, str], ...] = ()
    prefix_map: tuple[tuple[str, str], ...] = ()
    manifest: tuple[tuple[str, int, int, int, int], ...] = ()

    @property
    def run_dir(self) -> Path:
        return self.ckpt_dir / self.run_name


_TRAILING_BACKSLASHES = re.compile(r"(\\*)('|$)")


def hydra_quote(value: str) -> str:
    """``value`` as a single-quoted Hydra override string that parses back unchanged.

    Raises:
        ValueError: ``value`` contains ``${`` (OmegaConf would interpolate it)
            or a NUL byte.

    >>> hydra_quote("/data/it's here, [1]=x.slp")
    "'/data/it\\\\'s here, [1]=x.slp'"
    """
    if "${" in value or "\x00" in value:
        raise ValueError(f"{value!r} cannot be passed to the trainer (contains '${{' or NUL)")

    def escape(match: re.Match[str]) -> str:
        run, after = match.group(1), match.group(2)
        return run * 2 + ("\\'" if after == "'" else "")

    return "'" + _TRAILING_BACKSLASHES.sub(escape, value) + "'"


def _mapping_options(plan: TrainPlan) -> list[str]:
    """sleap-nn takes one kind of map per run: exact maps become prefix maps when mixed.

    A full original path used as a prefix matches only that file (and names
    that extend it); exact pairs go first so they win over broader prefixes,
    then prefixes longest first (sleap-io applies them in order).
    """
    prefixes = sorted(plan.prefix_map, key=lambda kv: len(kv[0]), reverse=True)
    if plan.video_path_map and not prefixes:
        return [x for old, new in plan.video_path_map for x in ("--video-path-map", old, new)]
    pairs = [*plan.video_path_map, *prefixes]
    return [x for old, new in pairs for x in ("--prefix-map", old, new)]


def resolve_program(prefix: Sequence[str]) -> list[str]:
    """The trainer command with its program found: on PATH, else beside this Python.

    A worker started as ``.venv/bin/sleap-rtc worker`` without activating the
    environment has no ``.venv/bin`` on PATH, yet ``sleap-nn`` was installed there
    by the ``train`` extra; look beside ``sys.executable`` before giving up. A
    program given with a folder is used as is.
    """
    if not prefix:
        raise ValueError("the trainer command is empty")
    program, *rest = prefix
    if Path(program).name != program or shutil.which(program):
        return [program, *rest]
    beside = Path(sys.executable).parent / program
    if beside.is_file():
        return [str(beside), *rest]
    return [program, *rest]


def build_command(
    prefix: Sequence[str], plan: TrainPlan, *, publish_port: int, controller_port: int
) -> list[str]:
    """The argv that runs ``plan``: ``prefix --config FILE [maps] overrides``.

    Raises:
        ValueError: a path that cannot be written as a Hydra override.
    """
    q = hydra_quote
    overrides = [
        # First override ends in "]": sleap-nn treats a first override ending in
        # .yaml as the config path.
        f"++data_config.train_labels_path=[{q(plan.labels_path)}]",
        f"++trainer_config.ckpt_dir={q(str(plan.ckpt_dir))}",
        f"++trainer_config.run_name={q(plan.run_name)}",
        "++trainer_config.save_ckpt=true",
        f"++trainer_config.zmq.publish_port={int(publish_port)}",
        f"++trainer_config.zmq.controller_port={int(controller_port)}",
    ]
    # Paths in the config that the worker did not check are replaced: val labels and
    # the resume checkpoint come from the spec or are null. (sleap-nn's path-map
    # code also reads data_config.val_labels_path, which a partial YAML may lack.)
    if plan.val_labels_path is not None:
        overrides.append(f"++data_config.val_labels_path=[{q(plan.val_labels_path)}]")
    else:
        overrides.append("++data_config.val_labels_path=null")
    if plan.max_epochs is not None:
        overrides.append(f"++trainer_config.max_epochs={int(plan.max_epochs)}")
    if plan.batch_size is not None:
        overrides.append(f"++trainer_config.train_data_loader.batch_size={int(plan.batch_size)}")
        overrides.append(f"++trainer_config.val_data_loader.batch_size={int(plan.batch_size)}")
    if plan.learning_rate is not None:
        overrides.append(f"++trainer_config.optimizer.lr={float(plan.learning_rate)!r}")
    if plan.resume_ckpt_path is not None:
        overrides.append(f"++trainer_config.resume_ckpt_path={q(plan.resume_ckpt_path)}")
    else:
        overrides.append("++trainer_config.resume_ckpt_path=null")
    program = resolve_program(prefix)
    return [*program, "--config", str(plan.config_file), *_mapping_options(plan), *overrides]
