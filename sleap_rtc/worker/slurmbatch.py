"""The batch script the worker submits for one job: pure rendering, plus an atomic write.

The script is ``#!/bin/bash``, one ``#SBATCH`` line per option that is set, the
operator's ``setup`` lines, then ``exec`` of the relay (so ``scancel --batch
--signal=INT`` reaches the relay itself, not a shell that ignores it):

>>> from sleap_rtc.config.worker import SlurmSettings
>>> text = render_batch_script(
...     SlurmSettings(partition="gpu", time_limit="30", gres="gpu:1"),
...     job_name=job_name_for("run 1"),
...     run_dir=Path("/runs/j1"),
...     log_file=Path("/runs/j1/slurm.log"),
...     relay_argv=["/opt/py/bin/python", "-m", "relay", "--note", "it's"],
...     export=["SLEAP_RTC_RELAY_SECRET"],
... )
>>> print(text)  # doctest: +NORMALIZE_WHITESPACE
#!/bin/bash
#SBATCH --job-name=sleap-rtc-run_1-b945d8cb026e35c6
#SBATCH --output=/runs/j1/slurm.log
#SBATCH --error=/runs/j1/slurm.log
#SBATCH --chdir=/runs/j1
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --no-requeue
#SBATCH --export=SLEAP_RTC_RELAY_SECRET
#SBATCH --partition=gpu
#SBATCH --time=30
#SBATCH --gres=gpu:1
# Written by sleap-rtc for one training; Slurm runs it on a compute node.
set -e
exec /opt/py/bin/python -m relay --note 'it'"'"'s'

Nothing an operator or a client writes can add a line or an option: every value is
checked (no control characters; ``#SBATCH`` values hold no spaces, quotes, ``#`` or
backslashes, which Slurm's own parser would read as separators, quotes, comments or
escapes), the job name is derived from the client's job id (:func:`job_name_for`),
the relay's arguments are shell-quoted, and ``extra_sbatch`` entries must each be one
``--option[=value]`` that the script does not set itself.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shlex
import tempfile
from collections.abc import Sequence
from pathlib import Path

from sleap_rtc.config.worker import SlurmSettings

__all__ = [
    "JOB_NAME_PREFIX",
    "RESERVED_OPTIONS",
    "job_name_for",
    "render_batch_script",
    "write_batch_script",
]

#: Every job name this worker gives Slurm starts with it (``squeue --name``, ``find``).
JOB_NAME_PREFIX = "sleap-rtc-"
#: Options the script sets itself; ``extra_sbatch`` may not repeat or override them.
RESERVED_OPTIONS = frozenset(
    {
        "--job-name",
        "--output",
        "--error",
        "--chdir",
        "--nodes",
        "--ntasks",
        "--no-requeue",
        "--requeue",
        "--export",
        "--wrap",
        "--array",
        "--partition",
        "--account",
        "--qos",
        "--time",
        "--cpus-per-task",
        "--mem",
        "--gres",
    }
)
#: Characters kept from a job id in the job name; every other one becomes "_".
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
#: How many characters of the (sanitized) job id the job name keeps.
_ID_CHARS = 37
#: A ``#SBATCH`` value: printable, and nothing Slurm's script parser treats specially.
_VALUE = re.compile(r"[^\s\"'\\#\x00-\x1f\x7f]+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_EXTRA = re.compile(r"(--[A-Za-z][A-Za-z0-9-]*)(?:=([^\s\"'\\#\x00-\x1f\x7f]+))?")


def job_name_for(job_id: str) -> str:
    """The Slurm job name for a client's job id: ``sleap-rtc-<id>-<hash>``.

    The id is client-chosen, so it is sanitized: every character outside
    ``[A-Za-z0-9._-]`` becomes ``_`` and only the first 37 are kept; then comes
    ``-`` and 16 hex digits of the SHA-256 of the whole id, so two different ids
    never share a name (the name is what :meth:`SlurmCommands.find` looks for).
    At most 64 characters.

    >>> job_name_for("a/b"), job_name_for("a_b")
    ('sleap-rtc-a_b-c14cddc033f64b9d', 'sleap-rtc-a_b-648fa9b31bc7ff7e')
    """
    digest = hashlib.sha256(job_id.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return f"{JOB_NAME_PREFIX}{_UNSAFE.sub('_', job_id)[:_ID_CHARS]}-{digest}"


def _value(option: str, value: str) -> str:
    if not _VALUE.fullmatch(value):
        raise ValueError(
            f"{option}: {value!r} cannot go on an #SBATCH line (no spaces, quotes, '#', "
            "backslashes or control characters)"
        )
    return value


def _path(option: str, path: Path) -> str:
    text = str(path)
    if not path.is_absolute():
        raise ValueError(f"{option}: must be an absolute path (got {text!r})")
    if "%" in text:
        # Slurm expands %j, %u, ... in --output/--error file names.
        raise ValueError(f"{option}: {text!r} holds '%', which Slurm would expand")
    return _value(option, text)


def _extra(option: str) -> str:
    match = _EXTRA.fullmatch(option)
    if match is None:
        raise ValueError(
            f"extra_sbatch: {option!r} is not one --option or --option=value without spaces, "
            "quotes, '#' or backslashes"
        )
    if match.group(1) in RESERVED_OPTIONS:
        raise ValueError(
            f"extra_sbatch: {match.group(1)} is set by sleap-rtc itself (use the [slurm] key "
            "for it, where there is one)"
        )
    return option


def render_batch_script(
    settings: SlurmSettings,
    *,
    job_name: str,
    run_dir: Path,
    log_file: Path,
    relay_argv: Sequence[str],
    export: Sequence[str] = (),
) -> str:
    """The batch script's text. ``export``: names of the submitting environment's
    variables the job gets (``--export``; none: ``--export=NONE``).

    Raises:
        ValueError: a value that cannot be written safely; the message names the option.
    """
    if not relay_argv:
        raise ValueError("relay_argv is empty")
    options: list[tuple[str, str | None]] = [
        ("--job-name", _value("--job-name", job_name)),
        ("--output", _path("--output", log_file)),
        ("--error", _path("--error", log_file)),
        ("--chdir", _path("--chdir", run_dir)),
        ("--nodes", "1"),
        ("--ntasks", "1"),
        # A job that fails with its node must not start again on another: run once.
        ("--no-requeue", None),
        # The worker's environment (its credential among it) stays on the worker: the
        # job starts with the node's login environment plus the variables named here
        # (the relay's key); the trainer gets only the operator's trainer_env
        # (launcher.LaunchPolicy scrubs the rest).
        ("--export", ",".join(_env_name(n) for n in export) if export else "NONE"),
    ]
    for option, value in (
        ("--partition", settings.partition),
        ("--account", settings.account),
        ("--qos", settings.qos),
        ("--time", settings.time_limit),
        ("--cpus-per-task", str(settings.cpus_per_task) if settings.cpus_per_task > 0 else ""),
        ("--mem", settings.mem),
        ("--gres", settings.gres),
    ):
        if value:
            options.append((option, _value(option, value)))
    lines = ["#!/bin/bash"]
    lines += [f"#SBATCH {o}" if v is None else f"#SBATCH {o}={v}" for o, v in options]
    lines += [f"#SBATCH {_extra(option)}" for option in settings.extra_sbatch]
    lines.append("# Written by sleap-rtc for one training; Slurm runs it on a compute node.")
    lines.append("set -e")
    for i, line in enumerate(settings.setup):
        if _CONTROL.search(line.replace("\t", " ")):
            raise ValueError(f"setup[{i}]: must be one line without control characters")
        lines.append(line)
    for arg in relay_argv:
        if "\x00" in arg:
            raise ValueError(f"relay_argv: {arg!r} holds a NUL byte")
    lines.append("exec " + " ".join(shlex.quote(arg) for arg in relay_argv))
    return "\n".join(lines) + "\n"


def _env_name(name: str) -> str:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise ValueError(f"export: {name!r} is not an environment variable name")
    return name


def write_batch_script(path: Path, text: str) -> None:
    """Write the script atomically (a temp file beside it, then rename), mode 0700."""
    fd, tmp = tempfile.mkstemp(prefix=".batch-", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fchmod(out.fileno(), 0o700)
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
