"""The Slurm commands the worker uses: pure parsers plus a thin asyncio adapter.

Slurm 22.05 facts this relies on (``../shared/REFERENCE.md``): ``sbatch --parsable``
prints ``ID`` or ``ID;cluster``; ``scontrol -o show job ID`` prints one line of
``Key=value`` pairs with ``ExitCode=rc:signal``, for about ``MinJobAge`` after the
job ended, then "Invalid job id specified"; ``squeue -t all`` also lists ended jobs
(without it they vanish, exit 0); ``--json`` is unreliable and ``sacct`` needs
slurmdbd, so neither is used. While slurmctld is down every command fails after a
few seconds with "Unable to contact slurm controller".

The parsers have no I/O:

>>> line = ("JobId=7 JobName=sleap-rtc-a JobState=FAILED Reason=NonZeroExitCode "
...         "Restarts=0 ExitCode=3:0 NodeList=vm BatchHost=vm")
>>> info = parse_show_job(line)
>>> (info.job_id, info.state, info.exit_code, info.signal, info.node, info.terminal)
('7', 'FAILED', 3, 0, 'vm', True)
>>> parse_sbatch_id("4242;cluster\\n")
'4242'
>>> refusal("sbatch: error: Batch job submission failed: Invalid partition name specified")
('--partition', 'Invalid partition name specified')

:class:`SlurmCommands` runs the commands (``asyncio.create_subprocess_exec``, never a
shell), each bounded by ``command_timeout_s``. Only "cannot reach the controller"
failures and timeouts are retried, with backoff, for at most ``unreachable_s`` in
all; anything else raises at once. ``submit`` never submits twice: before it runs
``sbatch`` again it asks Slurm whether a job of that name exists already.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from sleap_rtc.config.worker import SlurmSettings

__all__ = [
    "TERMINAL_STATES",
    "SbatchRefused",
    "SlurmCommands",
    "SlurmError",
    "SlurmJobInfo",
    "SlurmUnreachable",
    "is_unreachable",
    "parse_sbatch_id",
    "parse_show_job",
    "refusal",
]

#: Job states after which the job will not run again (``--no-requeue``).
TERMINAL_STATES = frozenset(
    {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED",
     "BOOT_FAIL", "DEADLINE", "SPECIAL_EXIT", "REVOKED"}
)  # fmt: skip
#: What Slurm's commands print when the controller cannot be reached (retried).
_UNREACHABLE = (
    "unable to contact slurm controller",
    "socket timed out on send/recv",
    "zero bytes were transmitted or received",
    "communication connection failure",
    "slurm backup controller in standby mode",
    "slurm temporarily unable to accept job",
    "connection refused",
)
#: sbatch's words -> the option they are about (best effort, first match wins).
_OPTION_WORDS: tuple[tuple[str, str], ...] = (
    ("account", "--account"),
    ("qos", "--qos"),
    ("partition", "--partition"),
    ("generic resource", "--gres"),
    ("gres", "--gres"),
    ("--time", "--time"),
    ("time limit", "--time"),
    ("memory", "--mem"),
    ("--mem", "--mem"),
    ("cpus-per-task", "--cpus-per-task"),
    ("cpu count", "--cpus-per-task"),
    ("node configuration", "--cpus-per-task/--mem/--gres"),
    ("working directory", "--chdir"),
    ("--chdir", "--chdir"),
    ("job name", "--job-name"),
)
#: A job id as the commands accept it ("123", an array task "123_4", a het part "123+0").
_JOB_ID = re.compile(r"\d+(?:[_+]\d+)?")
#: A job name ``find`` accepts (``squeue --name`` splits on commas).
_NAME = re.compile(r"[A-Za-z0-9._-]{1,200}")
#: A signal name or number for ``scancel --signal``.
_SIGNAL = re.compile(r"(?:SIG)?[A-Z0-9]{1,10}")
#: A ``Key=`` at the start of a ``scontrol -o`` field ("AllocNode:Sid=", "CPUs/Task=").
_KEY = re.compile(r"(?:^|\s)([A-Za-z][A-Za-z0-9_:/.]*)=")


class SlurmError(Exception):
    """A Slurm command failed; the message names the command and what it said."""


class SlurmUnreachable(SlurmError):
    """slurmctld could not be reached (or the command timed out) for ``unreachable_s``."""


class SbatchRefused(SlurmError):
    """``sbatch`` refused the job (bad partition, limits, a bad option).

    Attributes:
        option: the sbatch option the refusal is about, best effort ("--partition");
            "" when Slurm's words do not say.
        reason: Slurm's own words.
    """

    def __init__(self, message: str, *, option: str, reason: str) -> None:
        super().__init__(message)
        self.option = option
        self.reason = reason


@dataclass(frozen=True)
class SlurmJobInfo:
    """One job as ``scontrol -o show job`` describes it."""

    job_id: str
    #: PENDING RUNNING COMPLETING COMPLETED FAILED CANCELLED TIMEOUT NODE_FAIL
    #: OUT_OF_MEMORY PREEMPTED BOOT_FAIL DEADLINE ...
    state: str
    #: Why it waits or ended ("Resources", "NonZeroExitCode", "TimeLimit"); "" for None.
    reason: str = ""
    #: The node running the batch script ("" before it starts).
    node: str = ""
    #: The batch script's exit status (``ExitCode=rc:sig``); None when not shown.
    exit_code: int | None = None
    #: The signal that ended it (0: none); None when not shown.
    signal: int | None = None
    name: str = ""
    #: How often Slurm requeued it.

    @property
    def terminal(self) -> bool:
        """True when the job has ended and will not run again."""
        return self.state in TERMINAL_STATES


def _fields(line: str) -> dict[str, str]:
    """``Key=value Key2=value with spaces`` -> a dict; a value runs up to the next key."""
    keys = list(_KEY.finditer(line))
    out: dict[str, str] = {}
    for here, after in zip(keys, [*keys[1:], None], strict=False):
        end = after.start() if after is not None else len(line)
        out.setdefault(here.group(1), line[here.end() : end].strip())
    return out


def _null(value: str) -> str:
    return "" if value in ("(null)", "None", "N/A", "") else value


def _int(value: str) -> int | None:
    return int(value) if value.isdigit() else None


def parse_show_job(text: str) -> SlurmJobInfo | None:
    """The first job in ``scontrol -o show job ID`` output; None when there is none.

    Values may hold spaces (``Reason=`` of a pending job, ``Command=``, ``WorkDir=``);
    a value runs up to the next ``Key=``. A value containing `` Key=`` of its own would
    be cut there: only the first fields (id, name, state, reason, exit code, node)
    are read, and job names this worker submits hold no spaces.
    """
    for line in text.splitlines():
        fields = _fields(line.strip())
        job_id = fields.get("JobId", "")
        state = fields.get("JobState", "")
        if not job_id or not state:
            continue
        rc: int | None = None
        sig: int | None = None
        code = fields.get("ExitCode", "")
        if ":" in code:
            left, _, right = code.partition(":")
            rc, sig = _int(left), _int(right)
        node = _null(fields.get("BatchHost", "")) or _null(fields.get("NodeList", ""))
        return SlurmJobInfo(
            job_id=job_id,
            # Extra words after the state ("CANCELLED by 0" in some versions).
            state=state.split()[0],
            reason=_null(fields.get("Reason", "")),
            node=node,
            exit_code=rc,
            signal=sig,
            name=fields.get("JobName", ""),
        )
    return None


def parse_sbatch_id(stdout: str) -> str:
    """``sbatch --parsable`` output (``ID`` or ``ID;cluster``) -> the id.

    Raises:
        SlurmError: the output is not a job id.
    """
    lines = [line.strip() for line in stdout.splitlines() if line.strip()]
    job_id = lines[-1].split(";", 1)[0].strip() if lines else ""
    if not _JOB_ID.fullmatch(job_id):
        raise SlurmError(f"sbatch --parsable printed no job id (got {stdout.strip()!r})")
    return job_id


def is_unreachable(output: str) -> bool:
    """True when a command's output says the controller could not be reached."""
    low = output.lower()
    return any(words in low for words in _UNREACHABLE)


def _said(stderr: str) -> str:
    """Slurm's message without the ``sbatch: error:`` prefixes, one line."""
    lines = []
    for line in stderr.splitlines():
        line = line.strip()
        for prefix in ("sbatch: error: ", "scancel: error: ", "error: ", "sbatch: "):
            line = line.removeprefix(prefix)
        line = line.removeprefix("Batch job submission failed: ")
        if line and not line.startswith('Try "sbatch --help"'):
            lines.append(line)
    return "; ".join(lines)


def refusal(stderr: str) -> tuple[str, str]:
    """sbatch's error output -> (the option it is about or "", Slurm's own words)."""
    reason = _said(stderr)
    low = reason.lower()
    bad = re.search(r"(?:unrecognized|invalid|unknown) option '?(--?[A-Za-z-]+)", reason)
    if bad:
        return bad.group(1), reason
    for words, option in _OPTION_WORDS:
        if words in low:
            return option, reason
    return "", reason


@dataclass(frozen=True)
class _Result:
    rc: int
    stdout: str
    stderr: str


class _TimedOut(Exception):
    pass


class SlurmCommands:
    """Runs sbatch / squeue / scontrol / scancel for the worker.

    Args:
        settings: ``bin_dir`` (None: found on PATH), ``command_timeout_s`` (one
            command), ``unreachable_s`` (all retries of one call together).
        env: variables added to the worker's environment for the commands
            (``SLURM_CONF``); None: the worker's environment as it is. The batch job
            inherits the environment ``sbatch`` runs in (Slurm's ``--export=ALL``).
    """

    def __init__(self, settings: SlurmSettings, *, env: Mapping[str, str] | None = None) -> None:
        self._bin_dir = settings.bin_dir
        self._timeout = settings.command_timeout_s
        self._unreachable = settings.unreachable_s
        self._env = {**os.environ, **env} if env is not None else None

    def command(self, name: str) -> str:
        """The path (or bare name, when not found) this adapter runs for ``name``."""
        if self._bin_dir is not None:
            return str(self._bin_dir / name)
        path = (self._env or os.environ).get("PATH")
        return shutil.which(name, path=path) or name

    async def _exec(
        self,
        argv: Sequence[str],
        timeout: float,
        cwd: Path | None,
        extra_env: Mapping[str, str] | None = None,
    ) -> _Result:
        env = self._env
        if extra_env:
            env = {**(env if env is not None else os.environ), **extra_env}
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=env,
                cwd=cwd,
            )
        except OSError as exc:
            raise SlurmError(f"{argv[0]}: cannot run it ({exc.strerror or exc})") from exc
        try:
            out, err = await asyncio.wait_for(proc.communicate(), timeout)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            raise _TimedOut from None
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            raise
        return _Result(
            proc.returncode if proc.returncode is not None else -1,
            out.decode(errors="replace"),
            err.decode(errors="replace"),
        )

    async def _run(self, name: str, args: Sequence[str], *, cwd: Path | None = None) -> _Result:
        """One command, retried while the controller is unreachable (``unreachable_s``)."""
        argv = [self.command(name), *args]
        shown = " ".join([name, *args])
        deadline = time.monotonic() + self._unreachable
        delay = 0.5
        while True:
            left = deadline - time.monotonic()
            try:
                result = await self._exec(argv, max(0.1, min(self._timeout, left)), cwd)
            except _TimedOut:
                why = f"no answer in {min(self._timeout, left):.1f} s"
            else:
                if result.rc == 0 or not is_unreachable(result.stderr + result.stdout):
                    return result
                why = _said(result.stderr) or f"exit status {result.rc}"
            if time.monotonic() + delay >= deadline:
                raise SlurmUnreachable(
                    f"{shown}: Slurm did not answer for {self._unreachable:g} s ({why})"
                )
            await asyncio.sleep(delay)
            delay = min(2 * delay, 5.0)

    async def submit(
        self,
        script: Path,
        *,
        job_name: str,
        cwd: Path,
        env: Mapping[str, str] | None = None,
    ) -> str:
        """``sbatch --parsable`` the script; the Slurm job id. ``env``: variables set
        for this sbatch only (the script's ``--export`` decides which reach the job;
        never on a command line, where ``ps`` shows them).

        Never submits twice. First it asks Slurm for jobs named ``job_name``: if one
        is still queued or running (a worker killed between sbatch and recording the
        id), that job's id is returned and nothing is submitted. Then, when an attempt
        timed out or could not reach the controller, the next attempt first looks
        again and returns the id of a job of that name that was not there before (an
        sbatch that timed out may have gone through).

        Raises:
            SbatchRefused: sbatch said no; ``option`` names the option, best effort.
            SlurmUnreachable: no answer for ``unreachable_s``.
        """
        if not _NAME.fullmatch(job_name):
            raise ValueError(f"job name must match {_NAME.pattern} (got {job_name!r})")
        argv = [
            self.command("sbatch"),
            "--parsable",
            f"--job-name={job_name}",
            f"--chdir={cwd}",
            str(script),
        ]
        deadline = time.monotonic() + self._unreachable
        delay = 0.5
        known: set[str] | None = None
        while True:
            left = max(0.1, deadline - time.monotonic())
            try:
                found = await asyncio.wait_for(self.find(job_name), left)
            except (TimeoutError, SlurmUnreachable) as exc:
                raise SlurmUnreachable(
                    f"sbatch {script}: Slurm did not answer for {self._unreachable:g} s "
                    f"(looking for a job named {job_name}: {exc or 'no answer'})"
                ) from None
            if known is None:
                known = {i.job_id for i in found}
                live = [i for i in found if not i.terminal]
            else:
                # The last attempt may have submitted the job: never a second one.
                live = [i for i in found if i.job_id not in known]
            if live:
                return live[-1].job_id
            left = deadline - time.monotonic()
            try:
                result = await self._exec(argv, max(0.1, min(self._timeout, left)), None, env)
            except _TimedOut:
                why = f"no answer in {min(self._timeout, left):.1f} s"
            else:
                if result.rc == 0:
                    return parse_sbatch_id(result.stdout)
                said = result.stderr + result.stdout
                if not is_unreachable(said):
                    option, reason = refusal(said)
                    where = f" ({option})" if option else ""
                    raise SbatchRefused(
                        f"sbatch refused the job{where}: {reason or f'exit {result.rc}'}",
                        option=option,
                        reason=reason,
                    )
                why = _said(said)
            if time.monotonic() + delay >= deadline:
                raise SlurmUnreachable(
                    f"sbatch {script}: Slurm did not answer for {self._unreachable:g} s ({why})"
                )
            await asyncio.sleep(delay)
            delay = min(2 * delay, 5.0)

    async def query(self, job_id: str) -> SlurmJobInfo | None:
        """The job's state now; None when Slurm no longer knows it (after MinJobAge).

        Raises:
            SlurmUnreachable: no answer for ``unreachable_s``.
            SlurmError: any other failure.
        """
        if not _JOB_ID.fullmatch(job_id):
            raise ValueError(f"not a Slurm job id: {job_id!r}")
        result = await self._run("scontrol", ["-o", "show", "job", job_id])
        if result.rc != 0:
            if "invalid job id" in result.stderr.lower():
                return None
            raise SlurmError(
                f"scontrol -o show job {job_id}: {_said(result.stderr) or f'exit {result.rc}'}"
            )
        info = parse_show_job(result.stdout)
        if info is None:
            raise SlurmError(
                f"scontrol -o show job {job_id}: no job in its output ({result.stdout[:200]!r})"
            )
        return info

    async def find(self, job_name: str) -> list[SlurmJobInfo]:
        """This user's jobs named ``job_name`` that Slurm still knows, oldest first."""
        if not _NAME.fullmatch(job_name):
            raise ValueError(f"job name must match {_NAME.pattern} (got {job_name!r})")
        result = await self._run(
            "squeue", ["-h", "-t", "all", "--me", f"--name={job_name}", "-o", "%i"]
        )
        if result.rc != 0:
            raise SlurmError(
                f"squeue --name={job_name}: {_said(result.stderr) or f'exit {result.rc}'}"
            )
        ids = sorted(
            {i.strip() for i in result.stdout.split() if _JOB_ID.fullmatch(i.strip())},
            key=lambda i: [int(p) for p in re.split(r"[_+]", i)],
        )
        found = []
        for job_id in ids:
            info = await self.query(job_id)
            if info is not None and info.name == job_name:
                found.append(info)
        return found

    async def cancel(self, job_id: str, *, signal: str | None = None, batch: bool = False) -> None:
        """``scancel [--batch] [--signal=SIG] ID``; a job that already ended is no error.

        Without ``signal`` Slurm ends the job (state CANCELLED). ``batch=True`` sends the
        signal to the batch script's process only (the relay, which ``exec`` made it).
        """
        if not _JOB_ID.fullmatch(job_id):
            raise ValueError(f"not a Slurm job id: {job_id!r}")
        args = []
        if batch:
            args.append("--batch")
        if signal is not None:
            if not _SIGNAL.fullmatch(signal):
                raise ValueError(f"not a signal name: {signal!r}")
            args.append(f"--signal={signal}")
        result = await self._run("scancel", [*args, job_id])
        said = _said(result.stderr).lower()
        # scancel exits 0 on most errors; what it prints is what counts.
        if result.rc == 0 and not said:
            return
        if "already completing or completed" in said or "invalid job id" in said:
            return
        raise SlurmError(
            f"scancel {' '.join([*args, job_id])}: {_said(result.stderr) or f'exit {result.rc}'}"
        )

    async def available(self) -> str | None:
        """None when Slurm answers; else why not, in one line (for start-up messages).

        Tries once (no retries), bounded by ``command_timeout_s``.
        """
        for name in ("sbatch", "squeue", "scontrol", "scancel"):
            path = self.command(name)
            if not (os.path.isfile(path) and os.access(path, os.X_OK)):
                where = f"in {self._bin_dir}" if self._bin_dir is not None else "on PATH"
                return f"{name} not found {where}"
        try:
            result = await self._exec([self.command("scontrol"), "ping"], self._timeout, None)
        except _TimedOut:
            return f"scontrol ping: no answer in {self._timeout:g} s"
        except SlurmError as exc:
            return str(exc)
        if result.rc == 0 and " is UP" in result.stdout:
            return None
        said = " ".join(result.stdout.split()[:6]) or _said(result.stderr)
        return f"slurmctld does not answer (scontrol ping: {said or f'exit {result.rc}'})"
