"""The worker's settings: ``worker.toml`` plus command-line overrides.

See ``docs/worker.example.toml`` for a documented example. Precedence, lowest
first: built-in defaults, the TOML file, environment (credential only), flags.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from sleap_rtc.config import (
    DEFAULT_ROOM,
    DEFAULT_SIGNAL_URL,
    ConfigFileError,
    Table,
    config_dir,
    read_toml,
    resolve_path,
    state_dir,
)

FILE_NAME = "worker.toml"
#: Environment variable holding the worker credential itself (headless deployments).
CREDENTIAL_ENV = "SLEAP_RTC_WORKER_CREDENTIAL"
DEFAULT_TRAINER_COMMAND: tuple[str, ...] = ("sleap-nn", "train")
DEFAULT_MAX_CONFIG_BYTES = 1024 * 1024


class WorkerConfigError(ConfigFileError):
    """A ``worker.toml`` (or worker flag) that cannot be used; the message names file and key."""


#: The values of ``[trainer] backend``.
BACKENDS = ("local", "slurm")
#: Where the worker's relay endpoint listens unless ``[slurm] listen`` says otherwise.
DEFAULT_RELAY_LISTEN = "0.0.0.0:5570"


@dataclass(frozen=True)
class SlurmSettings:
    """``[slurm]``: how the worker submits trainings to a Slurm cluster (backend "slurm").

    Each option maps to one ``#SBATCH`` line; an empty value (or 0) leaves it to the
    cluster's defaults. See ``docs/worker.example.toml``.
    """

    partition: str = ""
    account: str = ""
    qos: str = ""
    #: ``--time``, in Slurm's own format ("30", "04:00:00", "1-00:00:00").
    time_limit: str = ""
    cpus_per_task: int = 0
    #: ``--mem`` ("16G").
    mem: str = ""
    #: ``--gres`` ("gpu:1").
    gres: str = ""
    #: More ``#SBATCH`` options, each one option ("--constraint=a100").
    extra_sbatch: tuple[str, ...] = ()
    #: The Python on the compute nodes that has sleap-rtc and sleap-nn installed
    #: ("": the worker's own interpreter, for nodes that share its file system).
    python: str = ""
    #: Shell lines run before the relay on the compute node ("module load cuda").
    setup: tuple[str, ...] = ()
    #: ``host:port`` the worker's relay endpoint binds (progress from compute nodes).
    #: Keep the port fixed: relays of running jobs reconnect to it after a restart.
    listen: str = DEFAULT_RELAY_LISTEN
    #: ``host:port`` compute nodes connect to ("": this host's name and the listen port).
    worker_address: str = ""
    #: Folder holding sbatch, squeue, scontrol and scancel ("": found on PATH).
    bin_dir: Path | None = None
    #: Seconds between two looks at a job's state in Slurm.
    poll_s: float = 5.0
    #: Seconds one Slurm command may take before it counts as failed.
    command_timeout_s: float = 30.0
    #: Seconds the worker keeps retrying while slurmctld cannot be reached.
    unreachable_s: float = 120.0


@dataclass(frozen=True)
class Mount:
    """One allowed mount: an absolute worker folder and the label clients see."""

    path: Path
    label: str


@dataclass(frozen=True)
class WorkerSettings:
    """Everything ``sleap-rtc worker`` needs, after files and flags are merged."""

    name: str = field(default_factory=socket.gethostname)
    room: str = DEFAULT_ROOM
    signaling_url: str = DEFAULT_SIGNAL_URL
    credential_file: Path | None = None
    credential: str | None = None
    jwks_file: Path | None = None
    mounts: tuple[Mount, ...] = ()
    concurrency: int = 1
    max_config_bytes: int = DEFAULT_MAX_CONFIG_BYTES
    #: ``[limits] job_retention_days``: how long the job store remembers an ended job
    #: (idempotency and attach by job id, across restarts); 0 keeps every job.
    job_retention_days: int = 30
    #: ``[limits] max_token_lifetime_hours``: clients' tokens living longer (exp - iat)
    #: are refused, however validly signed.
    max_token_lifetime_hours: int = 7 * 24
    trainer_command: tuple[str, ...] = DEFAULT_TRAINER_COMMAND
    #: ``[trainer] confinement``: "auto" (Landlock when the kernel offers it),
    #: "require" (refuse to start without it) or "off".
    confinement: str = "auto"
    #: ``[trainer] allow_reporting``: let jobs turn on reporting services (wandb).
    allow_reporting: bool = False
    #: ``[trainer] backend``: "local" (a subprocess here) or "slurm" (a batch job).
    backend: str = "local"
    #: ``[slurm]``: used when ``backend`` is "slurm".
    slurm: SlurmSettings = field(default_factory=SlurmSettings)
    state_dir: Path = field(default_factory=lambda: state_dir() / "worker")
    loopback: bool = False
    ice_servers: tuple[str, ...] = ()
    #: The file these settings were read from (None: defaults and flags only).
    source: Path | None = None

    def read_credential(self) -> str | None:
        """The worker credential: inline/env first, then the credential file."""
        if self.credential:
            return self.credential.strip()
        if self.credential_file is None:
            return None
        try:
            text = self.credential_file.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            raise WorkerConfigError(
                self.source, "credential_file", f"{self.credential_file} does not exist"
            ) from None
        except OSError as exc:
            raise WorkerConfigError(
                self.source, "credential_file", f"cannot read {self.credential_file}: {exc}"
            ) from None
        if not text:
            raise WorkerConfigError(
                self.source, "credential_file", f"{self.credential_file} is empty"
            )
        return text

    def validate(self) -> None:
        """Checks that need the filesystem: mounts exist and are folders."""
        if not self.mounts:
            raise WorkerConfigError(
                self.source, "mounts", "at least one mount is required (use --mount PATH)"
            )
        for i, mount in enumerate(self.mounts):
            key = f"mounts[{i}]" if self.source else "--mount"
            if not mount.path.is_absolute():
                raise WorkerConfigError(self.source, key, f"{mount.path} is not an absolute path")
            if not mount.path.is_dir():
                raise WorkerConfigError(self.source, key, f"{mount.path} is not an existing folder")


def default_path() -> Path:
    return config_dir() / FILE_NAME


def parse_mount(text: str, *, source: Path | None = None, key: str = "--mount") -> Mount:
    """``PATH`` or ``LABEL=PATH``; the label defaults to the folder's name."""
    label, sep, path_text = text.partition("=")
    if not sep:
        label, path_text = "", text
    if not path_text.strip():
        raise WorkerConfigError(source, key, f"{text!r} names no folder")
    path = resolve_path(path_text, source)
    if not path.is_absolute():
        path = path.absolute()
    return Mount(path=path, label=label.strip() or path.name or str(path))


def load(path: Path | None = None, *, required: bool = False) -> WorkerSettings:
    """Read ``path`` (or the default file when it exists) into settings.

    Args:
        path: A file named by the user; it must exist.
        required: Whether a missing default file is an error.
    """
    if path is None:
        candidate = default_path()
        if not candidate.exists():
            if required:
                raise WorkerConfigError(candidate, "", "file not found")
            return from_env(WorkerSettings())
        path = candidate
    return from_env(parse(read_toml(path, WorkerConfigError), path))


def from_env(settings: WorkerSettings) -> WorkerSettings:
    secret = os.environ.get(CREDENTIAL_ENV)
    if secret and not settings.credential:
        return replace(settings, credential=secret)
    return settings


#: The values of ``[trainer] confinement``.
CONFINEMENT_MODES = ("auto", "require", "off")


def parse(data: dict[str, Any], source: Path | None) -> WorkerSettings:
    """Build settings from a parsed TOML document, validating every key."""
    top = Table(data, source, error=WorkerConfigError)
    defaults = WorkerSettings()
    mounts: list[Mount] = []
    raw_mounts = top.raw("mounts")
    if isinstance(raw_mounts, list) and all(isinstance(m, str) for m in raw_mounts):
        for i, text in enumerate(raw_mounts):
            mounts.append(parse_mount(text, source=source, key=f"mounts[{i}]"))
    elif raw_mounts is not None:
        for table in top.tables("mounts"):
            mount_path = table.path("path")
            if mount_path is None:
                raise table.error("path", "is required")
            label = table.string("label") or mount_path.name or str(mount_path)
            table.finish()
            mounts.append(Mount(path=mount_path, label=label))

    limits = top.table("limits")
    concurrency = limits.integer("concurrency", defaults.concurrency, minimum=1)
    max_config = limits.integer("max_config_bytes", defaults.max_config_bytes, minimum=1024)
    retention = limits.integer("job_retention_days", defaults.job_retention_days, minimum=0)
    lifetime = limits.integer(
        "max_token_lifetime_hours", defaults.max_token_lifetime_hours, minimum=1
    )
    limits.finish()

    trainer = top.table("trainer")
    command = trainer.strings("command", list(defaults.trainer_command))
    assert command is not None
    if not command or not command[0].strip():
        raise trainer.error("command", "must name a program")
    confinement = trainer.nonempty("confinement", defaults.confinement)
    if confinement not in CONFINEMENT_MODES:
        raise trainer.error(
            "confinement", f"must be one of {', '.join(CONFINEMENT_MODES)} (got {confinement!r})"
        )
    allow_reporting = trainer.boolean("allow_reporting", defaults.allow_reporting)
    backend = trainer.nonempty("backend", defaults.backend)
    if backend not in BACKENDS:
        raise trainer.error("backend", f"must be one of {', '.join(BACKENDS)} (got {backend!r})")
    trainer.finish()
    slurm = parse_slurm(top.table("slurm"))

    url = top.nonempty("signaling_url", defaults.signaling_url)
    if not url.startswith(("ws://", "wss://")):
        raise top.error("signaling_url", f"must start with ws:// or wss:// (got {url!r})")
    settings = WorkerSettings(
        name=top.nonempty("name", defaults.name),
        room=top.nonempty("room", defaults.room),
        signaling_url=url,
        credential_file=top.path("credential_file"),
        jwks_file=top.path("jwks_file"),
        mounts=tuple(mounts),
        concurrency=concurrency,
        max_config_bytes=max_config,
        job_retention_days=retention,
        max_token_lifetime_hours=lifetime,
        trainer_command=tuple(command),
        confinement=confinement,
        allow_reporting=allow_reporting,
        backend=backend,
        slurm=slurm,
        state_dir=top.path("state_dir") or defaults.state_dir,
        loopback=top.boolean("loopback", defaults.loopback),
        ice_servers=tuple(top.strings("ice_servers", []) or []),
        source=source,
    )
    if "credential" in data:
        raise top.error(
            "credential",
            "do not put the secret in this file; use credential_file or "
            f"the {CREDENTIAL_ENV} environment variable",
        )
    top.finish()
    return settings


def _address(table: Table, name: str, value: str, *, need_host: bool) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536 or (need_host and not host):
        raise table.error(name, f"must be host:port with a port from 1 to 65535 (got {value!r})")
    return value


def _seconds(table: Table, name: str, default: float) -> float:
    value = table.raw(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise table.error(name, f"must be a positive number of seconds (got {value!r})")
    return float(value)


def parse_slurm(table: Table) -> SlurmSettings:
    """``[slurm]``, every key checked; values that would break a ``#SBATCH`` line are refused."""
    d = SlurmSettings()
    words = {}
    for name in ("partition", "account", "qos", "time_limit", "mem", "gres", "python"):
        value = table.string(name, getattr(d, name)) or ""
        if any(c.isspace() for c in value):
            raise table.error(name, f"must be one word without spaces (got {value!r})")
        words[name] = value
    extra = tuple(table.strings("extra_sbatch", []) or [])
    for i, option in enumerate(extra):
        if not option.startswith("-") or "\n" in option or "\r" in option:
            raise table.error(
                f"extra_sbatch[{i}]", f"must be one sbatch option such as --constraint=a100 "
                f"(got {option!r})"
            )
    setup = tuple(table.strings("setup", []) or [])
    for i, line in enumerate(setup):
        if "\n" in line or "\r" in line:
            raise table.error(f"setup[{i}]", "must be one line")
    listen = _address(table, "listen", table.nonempty("listen", d.listen), need_host=True)
    address = table.string("worker_address", "") or ""
    if address:
        _address(table, "worker_address", address, need_host=True)
    settings = SlurmSettings(
        **words,
        cpus_per_task=table.integer("cpus_per_task", d.cpus_per_task, minimum=0),
        extra_sbatch=extra,
        setup=setup,
        listen=listen,
        worker_address=address,
        bin_dir=table.path("bin_dir"),
        poll_s=_seconds(table, "poll_s", d.poll_s),
        command_timeout_s=_seconds(table, "command_timeout_s", d.command_timeout_s),
        unreachable_s=_seconds(table, "unreachable_s", d.unreachable_s),
    )
    table.finish()
    return settings


def with_overrides(settings: WorkerSettings, **flags: Any) -> WorkerSettings:
    """Apply command-line flags; a flag left at None keeps the file's value.

    ``mounts`` given on the command line replace the file's mounts.
    """
    changes: dict[str, Any] = {}
    for name, value in flags.items():
        if value is None:
            continue
        if name == "mounts":
            if value:
                changes["mounts"] = tuple(parse_mount(m) for m in value)
            continue
        if name == "trainer_command":
            import shlex

            parts = shlex.split(value) if isinstance(value, str) else list(value)
            if not parts:
                raise WorkerConfigError(None, "--trainer-command", "must name a program")
            changes[name] = tuple(parts)
            continue
        if name == "concurrency" and int(value) < 1:
            raise WorkerConfigError(None, "--concurrency", f"must be at least 1 (got {value})")
        if name == "signaling_url" and not str(value).startswith(("ws://", "wss://")):
            raise WorkerConfigError(
                None, "--server", f"must start with ws:// or wss:// (got {value!r})"
            )
        if name == "ice_servers":
            changes[name] = tuple(value)
            continue
        if name not in WorkerSettings.__dataclass_fields__:
            raise TypeError(f"unknown worker setting {name!r}")
        changes[name] = value
    return replace(settings, **changes)
